"""Where datasets live.

Every dataset is addressed relative to one data root so that configs stay portable: a CLI/YAML
path wins, then the ``LIT_NOMIC_DATA`` environment variable, then ``../shared/data`` beside the
current working directory (the layout of a development checkout).
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "LIT_NOMIC_DATA"


def data_root(explicit: str | os.PathLike | None = None) -> Path:
    """Resolve the data root; the directory may not exist (callers report what is missing)."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path.cwd().parent / "shared" / "data"


def resolve_dataset(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """Return an existing dataset path: absolute/relative paths as given, else under the data root.

    Raises FileNotFoundError naming the dataset and the variable to set, because the Hugging Face
    Hub and other downloads are not reachable everywhere our users train.
    """
    p = Path(path).expanduser()
    if p.exists():
        return p
    rooted = data_root(root) / p
    if rooted.exists():
        return rooted
    raise FileNotFoundError(
        f"dataset {str(path)!r} not found as a path nor under the data root {str(data_root(root))!r}; "
        f"set {DATA_ENV} (or pass data_root) to the folder that holds it"
    )
