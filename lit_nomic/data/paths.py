"""Where datasets live, and how a missing public dataset is fetched.

Every dataset is addressed relative to one data root so that configs stay portable: a CLI/YAML
path wins, then the ``LIT_NOMIC_DATA`` environment variable, then ``../shared/data`` beside the
current working directory (the layout of a development checkout). A dataset that is not under the
root but has a known public source is downloaded once into a cache; offline, the error names the
dataset and the variable to set instead.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import urllib.request
import zipfile
from pathlib import Path

DATA_ENV = "LIT_NOMIC_DATA"
CACHE_ENV = "LIT_NOMIC_CACHE"

# Public sources of datasets we know how to lay out: relative path -> (zip URL, folder inside the zip).
# The BEIR zips of the 15 public BEIR datasets of MTEB's English retrieval (``--data beir-paper``);
# ``cqadupstack`` unpacks to one BEIR folder per forum (``cqadupstack/<forum>/``).
BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
PUBLIC_DATASETS: dict[str, tuple[str, str]] = {
    f"beir/{name}": (BEIR_URL.format(name=name), name)
    for name in (
        "scifact", "nfcorpus", "arguana", "scidocs", "fiqa", "trec-covid", "quora", "nq", "hotpotqa",
        "fever", "climate-fever", "dbpedia-entity", "msmarco", "webis-touche2020", "cqadupstack",
    )
}  # fmt: skip

# Datasets that cannot be downloaded here (gated or too large for one zip): relative path prefix ->
# what to fetch by hand. MIRACL's topics/qrels and corpus live in two Hugging Face dataset repos.
MANUAL_DATASETS: dict[str, str] = {
    "miracl": (
        "fetch MIRACL by hand: for each language <lang>, topics/topics.miracl-v1.0-<lang>-dev.tsv and "
        "qrels/qrels.miracl-v1.0-<lang>-dev.tsv from the folder miracl-v1.0-<lang> of the Hugging Face "
        "dataset miracl/miracl, and docs-*.jsonl.gz from miracl-corpus-v1.0-<lang> of miracl/miracl-corpus "
        "into miracl/<lang>/corpus/"
    ),
}


def fetch_hint(key: str) -> str | None:
    """What to fetch (URL or manual steps) for a dataset path relative to the data root, if known."""
    key = Path(key).as_posix().strip("/")
    if key in PUBLIC_DATASETS:
        url, inner = PUBLIC_DATASETS[key]
        return f"download {url} and unzip its folder {inner!r} there"
    for prefix, hint in MANUAL_DATASETS.items():
        if key == prefix or key.startswith(prefix + "/"):
            return hint
    return None


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root; the directory may not exist (callers report what is missing)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.cwd().parent / "shared" / "data"


def cache_root() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lit_nomic"


def resolve_dataset(
    path: str | os.PathLike, root: str | os.PathLike | None = None, download: bool = True
) -> Path:
    """Return an existing dataset path: as given, else under the data root, else a downloaded copy.

    Raises FileNotFoundError naming the dataset and the variable to set.
    """
    p = Path(path).expanduser()
    if p.exists():
        return p
    rooted = data_root(root) / p
    if rooted.exists():
        return rooted
    key = Path(path).as_posix().strip("/")
    cached = cache_root() / "datasets" / key
    if cached.exists():
        return cached
    rooted_str = str(rooted)
    hint = f"set {DATA_ENV} (or pass data_root) to the folder that holds it"
    if download and key in PUBLIC_DATASETS:
        url, inner = PUBLIC_DATASETS[key]
        try:
            return download_zip_dataset(url, inner, cached)
        except (OSError, zipfile.BadZipFile) as err:
            reason = " ".join(str(err).split())  # one line, whatever the OS put in the message
            raise FileNotFoundError(
                f"dataset {key!r} is missing: no folder {rooted_str} (data root {str(data_root(root))!r}) and "
                f"downloading it from {url} failed ({reason}); fetch that zip by hand and unzip its folder "
                f"{inner!r} to {rooted_str}, or {hint}"
            ) from err
    manual = fetch_hint(key)
    if manual is not None:
        raise FileNotFoundError(
            f"dataset {key!r} is missing: no folder {rooted_str} (data root {str(data_root(root))!r}); it is "
            f"not downloaded automatically: {manual}; or {hint}"
        )
    raise FileNotFoundError(
        f"dataset {str(path)!r} not found as a path nor under the data root {str(data_root(root))!r}; {hint}"
    )


def download_zip_dataset(url: str, inner: str, target: Path, timeout: float = 60.0) -> Path:
    """Download a zip, extract its ``inner`` folder to ``target`` atomically (rename of a temp dir)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        archive = Path(tmp) / "download.zip"
        print(f"downloading {url} -> {target}", file=sys.stderr)
        with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "x")
        source = Path(tmp) / "x" / inner
        if not source.is_dir():
            raise OSError(f"{url}: archive has no folder {inner!r}")
        os.replace(source, target)
    return target
