"""JSONL shards: finding them, indexing their lines once, and reading one line by position.

Why an index of byte offsets: training draws rows in a random order, so every read must be O(1)
without holding texts in memory. One sequential pass stores, per kept line, its byte offset (int64) and
length (int32) in numpy arrays (12 bytes a record; forked DataLoader workers share them copy-on-write),
and a read is a single ``os.pread``. ``pread`` carries no file position, so the parent and any number
of forked workers can read the same descriptor without racing on ``seek``.

Why ``.gz`` shards are decompressed to a cache: gzip has no random access, so reading line ``i``
costs decompressing everything before it, i.e. O(N) per row and O(N²) per epoch under a shuffled
order. Indexing by line number with a sequential reader only works for sequential consumption, which
a shuffled contrastive sampler never does. Decompressing once (to ``cache_dir``, keyed by the shard's
absolute path, size and mtime, written atomically) turns every later read into the uncompressed
case at the price of disk space equal to the uncompressed shard.
"""

from __future__ import annotations

import glob
import gzip
import hashlib
import os
import shutil
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lit_nomic.data.formats import iter_raw_lines, parse_json_line
from lit_nomic.data.paths import DATA_ENV, data_root
from lit_nomic.data.records import DataFormatError, OnError, SkipReport, handle_bad_line
from lit_nomic.fileio import atomic_write

__all__ = [
    "CACHE_ENV",
    "LineIndex",
    "ShardReader",
    "default_cache_dir",
    "index_jsonl",
    "materialize_shard",
    "parse_json_line",
    "resolve_shards",
]

CACHE_ENV = "LIT_NOMIC_CACHE"
_GLOB_CHARS = set("*?[")
_SHARD_SUFFIXES = (".jsonl", ".jsonl.gz")
_MAX_LINE_BYTES = 2**31 - 1


def default_cache_dir() -> Path:
    """``$LIT_NOMIC_CACHE``, else ``$XDG_CACHE_HOME/lit_nomic``, else ``~/.cache/lit_nomic`` (never the repo)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "lit_nomic"


def _is_shard(path: Path) -> bool:
    return path.is_file() and path.name.endswith(_SHARD_SUFFIXES)


def resolve_shards(path: str | os.PathLike, root: str | os.PathLike | None = None) -> list[Path]:
    """A file, a folder of ``*.jsonl[.gz]`` shards, or a glob; relative paths also tried under the data root.

    Shards are sorted by name so that row numbers (and therefore the whole sampling plan) do not depend
    on directory listing order.
    """
    text = os.fspath(path)
    candidates = [Path(text).expanduser()]
    if not Path(text).expanduser().is_absolute():
        candidates.append(data_root(root) / text)
    for candidate in candidates:
        if _GLOB_CHARS & set(str(candidate)):
            hits = sorted(Path(p) for p in glob.glob(str(candidate), recursive=True))
            shards = [p for p in hits if _is_shard(p)]
            if shards:
                return shards
        elif candidate.is_dir():
            shards = sorted(p for p in candidate.iterdir() if _is_shard(p))
            if not shards:
                raise FileNotFoundError(f"folder {str(candidate)!r} holds no *.jsonl or *.jsonl.gz shards")
            return shards
        elif candidate.is_file():
            return [candidate]
    raise FileNotFoundError(
        f"dataset {text!r} not found as a path, folder or glob, nor under the data root "
        f"{str(data_root(root))!r}; set {DATA_ENV} (or pass data_root) to the folder that holds it"
    )


def materialize_shard(path: Path, cache_dir: str | os.PathLike | None = None) -> Path:
    """The path to read by offset: the shard itself, or for ``.gz`` its decompressed cached copy."""
    if not path.name.endswith(".gz"):
        return path
    cache = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    stat = path.stat()
    key = hashlib.blake2b(
        f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode(), digest_size=8
    ).hexdigest()
    target = cache / f"{path.name[: -len('.gz')]}.{key}"
    if target.exists():
        return target
    try:  # atomic: concurrent ranks each write their own temporary, last one wins
        with gzip.open(path, "rb") as src:
            atomic_write(target, lambda dst: shutil.copyfileobj(src, dst, length=1 << 20))
    except (OSError, EOFError, zlib.error) as exc:
        raise DataFormatError(str(path), f"cannot decompress gzip shard: {exc}") from exc
    return target


@dataclass
class LineIndex:
    """Byte offsets and lengths of the kept lines of one shard (in file order)."""

    offsets: np.ndarray  # int64
    lengths: np.ndarray  # int32

    def __len__(self) -> int:
        return int(self.offsets.shape[0])


def index_jsonl(
    path: Path,
    read_path: Path,
    validate: Callable[[dict, str], object],
    on_error: OnError,
    report: SkipReport,
) -> LineIndex:
    """One pass over ``read_path``: parse and validate each line, keep the offsets of the good ones.

    Validation happens here, not at read time, so that a bad line fails before training starts (or is
    counted once under ``skip``) and so that the row count the sampler plans with is final. Blank lines
    are not records and are passed over. Messages cite ``path`` (the ``.gz`` the user named, not the
    cache copy) and 1-based line numbers.
    """
    offsets = array("q")
    lengths = array("i")
    for _, start, raw, where in iter_raw_lines(read_path, path):
        if len(raw) > _MAX_LINE_BYTES:
            handle_bad_line(DataFormatError(where, "line longer than 2 GiB"), on_error, report)
            continue
        try:
            validate(parse_json_line(raw, where), where)
        except DataFormatError as exc:
            handle_bad_line(exc, on_error, report)
            continue
        offsets.append(start)
        lengths.append(len(raw))
    return LineIndex(
        np.frombuffer(offsets, dtype=np.int64).copy(), np.frombuffer(lengths, dtype=np.int32).copy()
    )


class ShardReader:
    """Reads ``length`` bytes at ``offset`` of one of several files, with per-process descriptors.

    Descriptors are opened lazily and dropped when pickled or when the process id changes, so a reader
    built in the trainer process works unchanged inside fork- or spawn-started DataLoader workers.
    """

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        self._fds: dict[int, int] = {}
        self._pid = os.getpid()

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_fds"] = {}
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _fd(self, shard: int) -> int:
        if self._pid != os.getpid():
            self._fds = {}  # inherited descriptors belong to the parent; pread is safe but keep ownership clear
            self._pid = os.getpid()
        fd = self._fds.get(shard)
        if fd is None:
            fd = os.open(self.paths[shard], os.O_RDONLY)
            self._fds[shard] = fd
        return fd

    def read(self, shard: int, offset: int, length: int) -> bytes:
        data = os.pread(self._fd(shard), length, offset)
        if len(data) != length:
            raise DataFormatError(
                f"{self.paths[shard]} @ byte {offset}",
                f"short read ({len(data)} of {length} bytes): the file changed after it was indexed",
            )
        return data

    def close(self) -> None:
        if self._pid == os.getpid():
            for fd in self._fds.values():
                os.close(fd)
        self._fds = {}

    def __del__(self) -> None:  # pragma: no cover - best effort at interpreter shutdown
        try:
            self.close()
        except Exception:
            pass
