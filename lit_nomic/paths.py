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
import tempfile
import urllib.request
import zipfile
from pathlib import Path

DATA_ENV = "LIT_NOMIC_DATA"
CACHE_ENV = "LIT_NOMIC_CACHE"

# Public sources of datasets we know how to lay out: relative path -> (zip URL, folder inside the zip).
PUBLIC_DATASETS: dict[str, tuple[str, str]] = {
    f"beir/{name}": (f"https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip", name)
    for name in (
        "scifact", "nfcorpus", "arguana", "scidocs", "fiqa", "trec-covid", "quora", "nq", "hotpotqa",
        "fever", "climate-fever", "dbpedia-entity", "msmarco", "webis-touche2020",
    )
}  # fmt: skip


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
    hint = f"set {DATA_ENV} (or pass data_root) to the folder that holds it"
    if download and key in PUBLIC_DATASETS:
        url, inner = PUBLIC_DATASETS[key]
        try:
            return download_zip_dataset(url, inner, cached)
        except OSError as err:
            raise FileNotFoundError(
                f"dataset {key!r} is not under the data root {str(data_root(root))!r} and downloading it "
                f"from {url} failed ({err}); {hint}"
            ) from err
    raise FileNotFoundError(
        f"dataset {str(path)!r} not found as a path nor under the data root {str(data_root(root))!r}; {hint}"
    )


def download_zip_dataset(url: str, inner: str, target: Path, timeout: float = 60.0) -> Path:
    """Download a zip, extract its ``inner`` folder to ``target`` atomically (rename of a temp dir)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{target.name}.") as tmp:
        archive = Path(tmp) / "download.zip"
        with urllib.request.urlopen(url, timeout=timeout) as response, archive.open("wb") as out:
            shutil.copyfileobj(response, out)
        with zipfile.ZipFile(archive) as zf:
            zf.extractall(Path(tmp) / "x")
        source = Path(tmp) / "x" / inner
        if not source.is_dir():
            raise OSError(f"{url}: archive has no folder {inner!r}")
        os.replace(source, target)
    return target
