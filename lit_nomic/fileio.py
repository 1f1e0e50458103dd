"""Atomic file and folder writes: a killed run never leaves a half-written result, model or config.

Runs are long and get interrupted; a half-written file that later parses (or fails to parse) would
silently corrupt tables and caches, so every writer goes through a temporary file in the target
folder, fsync, then ``os.replace``. A model export is several files that only make sense together
(an 8-expert weight file beside a 4-expert config is a broken model), so :func:`atomic_folder`
writes the whole folder beside the target and renames it into place.

A process killed mid-write leaves its temporary (``.<name>.<random>.tmp``) behind; the first write
of this process into that folder (and every folder export) removes such leftovers once they are
stale (last modified before this process started, and more than :data:`STALE_AFTER_S` ago), so a
writer running concurrently in another process keeps its temporary. Once per folder, because a
cache folder of thousands of files would otherwise be listed on every write.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

# Results, caches and exported models are meant to be shared: world-readable, like a plain write
# under the usual umask (mkstemp/mkdtemp alone would give 0600/0700).
FILE_MODE = 0o644
FOLDER_MODE = 0o755
STALE_AFTER_S = 60.0
_PROCESS_START = time.time()
# What mkstemp/mkdtemp name our temporaries: ".<name>." + 8 random characters + ".tmp" (or ".old",
# a replaced export folder set aside); nothing else in a folder is ever deleted.
_LEFTOVER = re.compile(r"^\..+\.[a-z0-9_]{8}\.(tmp|old)$")
_CLEANED: set[str] = set()  # folders already cleaned by this process


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary file name beside ``path`` to write; on success it is fsynced, made 0644 and
    moved into place, on an exception deleted. For writers that need a name, not a handle (memory
    maps, decompressors); :func:`atomic_write` is the handle form."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if str(target.parent) not in _CLEANED:
        remove_stale_temporaries(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write`` on a temp file beside ``path`` and move it into place; never leaves partials."""
    target = Path(path)
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        write(fh)
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_folder(
    path: str | os.PathLike, replaceable: Callable[[Path], bool] | None = None
) -> Iterator[Path]:
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` as a whole.

    An existing ``path`` is renamed aside, the new folder renamed in, then the old one deleted, so a
    reader sees the old folder or the new one, never a mix (between the two renames ``path`` is
    briefly absent). On an exception the temporary folder is deleted and ``path`` is untouched.

    Args:
        path: the folder to (re)create.
        replaceable: called on an existing ``path`` before anything is written; returning False
            refuses to replace it (for instance a folder holding files that are not ours).
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise FileExistsError(f"{target}: exists and is not a folder")
    if target.is_dir() and replaceable is not None and not replaceable(target):
        raise FileExistsError(f"{target}: refusing to replace this folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        os.chmod(tmp, FOLDER_MODE)
        yield tmp
        _fsync_folder(tmp)
        old = None
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
            os.replace(target, old)  # an empty folder as the destination: rename replaces it
        os.replace(tmp, target)
        _fsync_folder(target.parent)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete leftovers of killed writers in ``folder`` (``.<name>.<8 chars>.tmp`` / ``.old``).

    Only entries last modified before this process started and at least ``STALE_AFTER_S`` ago go,
    so a write in progress in another process is left alone. Errors are ignored: cleaning is a
    courtesy, never a reason to fail the write. Returns what was removed.
    """
    folder = Path(folder)
    _CLEANED.add(str(folder))
    cutoff = min(_PROCESS_START, time.time() - STALE_AFTER_S)
    removed: list[Path] = []
    try:
        with os.scandir(folder) as entries:
            candidates = [Path(e.path) for e in entries if _LEFTOVER.match(e.name)]
    except OSError:
        return removed
    for entry in candidates:
        try:
            if entry.lstat().st_mtime >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed.append(entry)
        except OSError:
            continue
    return removed


def _fsync_folder(folder: Path) -> None:
    """Persist a folder's entries (renames, new files); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
