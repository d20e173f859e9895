"""The package works once installed: a wheel in a fresh venv, run from an empty directory.

The wheel is built from this checkout and installed (without its dependencies, which the fresh
venv borrows from the test environment through a .pth line) into a new venv; the presets come
from the package, never from a ./configs next to the source.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(cmd, cwd, timeout=600, env=None):
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    import shutil

    d = tmp_path_factory.mktemp("wheel")
    src = d / "src"  # a copy: an in-tree build/ could hold stale modules and leak them into the wheel
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", "demo_output", "runs", "artifacts"
        ),
    )
    _run(
        [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation", "-q", "-w", str(d)], cwd=d
    )
    (whl,) = d.glob("vid2pair-*.whl")
    return whl


def test_the_wheel_has_one_namespace_and_the_presets(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"vid2pair"}, top
    for preset in ("demo", "framepainter", "magicfixup", "train_tiny_cpu"):
        assert f"vid2pair/configs/{preset}.yaml" in names
    assert "vid2pair/notebooks/qc.ipynb" in names
    for mod in (
        "vid2pair/__init__.py",
        "vid2pair/core/stage.py",
        "vid2pair/pipeline/cli.py",
        "vid2pair/stages/flow.py",
        "vid2pair/trainer/train.py",
        "vid2pair/jobs/submit.py",
    ):
        assert mod in names
    assert not any(n.startswith("vid2pair/tests/") for n in names)


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_from_an_empty_directory(wheel, tmp_path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    site = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp_path).stdout.strip()
    )
    # borrow the dependencies (not vid2pair: a .pth line adds the directory, it does not run the
    # editable install's own .pth finder there)
    (site / "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(py),
            "install",
            "--no-deps",
            "--ignore-installed",
            "-q",
            str(wheel),
        ],
        cwd=tmp_path,
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RAY_ADDRESS")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    where = _run(
        [
            str(py),
            "-c",
            "import vid2pair, importlib.util as u; print(vid2pair.__file__); print([n for n in "
            "('pipeline', 'stages', 'trainer', 'jobs', 'core') if u.find_spec(n)])",
        ],
        cwd=empty,
        env=env,
    ).stdout.split("\n")
    assert where[0].startswith(str(venv)), where
    assert where[1] == "[]", where  # no top-level names besides vid2pair
    vid2pair = str(venv / "bin" / "vid2pair")
    r = _run([vid2pair, "config", "framepainter"], cwd=empty, env=env)
    assert "name: framepainter" in r.stdout
    _run([vid2pair, "config", "configs/magicfixup.yaml"], cwd=empty, env=env)
    r = _run([vid2pair, "demo", "--output", "demo_output"], cwd=empty, env=env, timeout=900)  # the Ray runner
    summary = json.loads((empty / "demo_output" / "dataset" / "summary.json").read_text())
    assert summary["samples"] > 0 and summary["all_inputs_accounted"] and summary["runner"] == "ray"
    _run(
        [
            vid2pair,
            "build",
            "--config",
            "demo",
            "--input",
            "demo_output/videos",
            "--output",
            "again",
            "--runner",
            "local",
            "--no-progress",
        ],
        cwd=empty,
        env=env,
    )
    again = json.loads((empty / "again" / "summary.json").read_text())
    assert again["samples"] == summary["samples"]
