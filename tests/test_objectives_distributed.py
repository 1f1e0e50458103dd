"""Two gloo processes reproduce the single-process loss and gradients of the global batch."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

SCRIPT = Path(__file__).parent / "dist_scripts" / "gather_equivalence.py"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
def test_two_process_gather_matches_single_process() -> None:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=180, env=env, cwd=REPO_ROOT
    )
    report = f"exit code {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, report
    match = re.search(
        r"^OK cases=(\d+) max_loss_diff=(\S+) max_grad_diff=(\S+) fp32_max_loss_diff=(\S+) fp32_max_grad_diff=(\S+)$",
        proc.stdout,
        re.MULTILINE,
    )
    assert match, report
    cases, loss64, grad64, loss32, grad32 = match.groups()
    assert int(cases) == 14
    assert float(loss64) < 1e-6 and float(grad64) < 1e-6, report
    assert float(loss32) < 1e-5 and float(grad32) < 1e-5, report
