"""benchmarks/gpu.py runs: on CPU, --smoke takes every section through its code at toy sizes; the
plain command without CUDA says it needs a GPU and exits 0."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_without_a_gpu_it_says_so():
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is here: the real benchmark would run")
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py")], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and "needs a CUDA GPU" in r.stdout


@pytest.mark.slow
def test_smoke_runs_every_section(tmp_path):
    out = tmp_path / "gpu.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(out.read_text())
    failed = {k: v for k, v in res.items() if isinstance(v, dict) and "error" in v}
    assert not failed, failed
    assert res["Ray pipeline, one GPU"]["samples"] > 0
    assert res["SEA-RAFT-M bf16"]["pairs/s"] > 0 and res["FramePainter trainer, 50 steps"]["samples/s"] > 0
