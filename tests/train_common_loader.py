"""Load ``dist_scripts/train_common.py`` once as the module ``train_common``.

The subprocess scripts import it by file location (they run outside pytest); in-process tests share
the same tiny-run builders through this loader instead of copying them.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

DIST_SCRIPTS = Path(__file__).parent / "dist_scripts"


def load_train_common() -> ModuleType:
    if "train_common" not in sys.modules:
        spec = importlib.util.spec_from_file_location("train_common", DIST_SCRIPTS / "train_common.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules["train_common"] = module
        spec.loader.exec_module(module)
    return sys.modules["train_common"]
