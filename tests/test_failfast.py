"""Fail fast with a clear message, before any work: inputs that match nothing, outputs that cannot be
written, resource requests the Ray cluster can never meet."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from vid2pair.pipeline.cli import main
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.runners import resource_problems


def _build(*args):
    return main(["build", "--config", "demo", "--runner", "local", "--no-progress", *args])


@pytest.mark.parametrize("kind", ["dir", "glob", "txt", "parquet"])
def test_an_input_that_matches_nothing_is_an_error(tmp_path, capsys, kind):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt.bak").write_text("not a video")
    if kind == "dir":
        spec, want = str(d), f"no video files found in {d} (extensions: .avi"
    elif kind == "glob":
        spec, want = str(d / "*.mp4"), "no video files found in"
    elif kind == "txt":
        spec = str(tmp_path / "list.txt")
        (tmp_path / "list.txt").write_text("# nothing yet\n")
        want = "the list is empty"
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        spec = str(tmp_path / "list.parquet")
        pq.write_table(pa.table({"path": pa.array([], pa.string())}), spec)
        want = "the list is empty"
    assert _build("--input", spec, "--output", str(tmp_path / "out")) == 2
    err = capsys.readouterr().err
    assert want in err and "Traceback" not in err
    assert not (tmp_path / "out" / "run.json").exists()


def test_an_output_that_cannot_be_written_is_an_error(tmp_path, capsys, demo_corpus):
    f = tmp_path / "a-file"
    f.write_text("x")
    assert _build("--input", str(demo_corpus[0]), "--output", str(f)) == 2
    assert f"--output {f}: exists and is not a directory" in capsys.readouterr().err
    assert _build("--input", str(demo_corpus[0]), "--output", str(f / "sub")) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_a_read_only_output_through_the_cli(tmp_path, demo_corpus):
    """Root writes anywhere, so the build runs without the capabilities that let root bypass file
    permissions (setpriv), as a user would."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    cmd = [
        sys.executable,
        "-m",
        "vid2pair.pipeline.cli",
        "build",
        "--config",
        "demo",
        "--input",
        str(demo_corpus[0]),
        "--output",
        str(ro / "out"),
        "--runner",
        "local",
        "--no-progress",
    ]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux)")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2, r.stderr[-2000:]
    assert f"--output {ro / 'out'}: cannot write there (permission denied on {ro})" in r.stderr
    assert "Traceback" not in r.stderr


def test_resource_requests_are_checked_against_the_nodes():
    cpu_only = [{"CPU": 16.0}]
    one_gpu = [{"CPU": 8.0, "GPU": 1.0}, {"CPU": 8.0}]
    assert resource_problems(load_config("framepainter_cpu"), nodes=cpu_only) == []  # weight-free: no GPU
    cfg = load_config("demo", ["flow.backend=raft_large", "flow.num_gpus=1"])
    assert resource_problems(cfg, nodes=cpu_only) == [
        "flow.num_gpus=1 but the Ray cluster has no GPU; set flow.num_gpus=0 to run the flow stage on CPU"
    ]
    assert resource_problems(cfg, nodes=one_gpu) == []
    cfg = load_config("demo", ["flow.backend=raft_large", "flow.num_gpus=2"])
    assert "flow.num_gpus=2 but no Ray node has more than 1 GPU(s)" in resource_problems(cfg, nodes=one_gpu)[0]
    cfg = load_config(
        "demo",
        ["track.backend=cotracker3_offline", "track.num_gpus=0.5", "collage.segmenter=sam", "collage.num_gpus=0.5"],
    )
    assert [p.split("=")[0] for p in resource_problems(cfg, nodes=cpu_only)] == ["track.num_gpus", "collage.num_gpus"]
    assert resource_problems(load_config("demo", ["runner.clip_stage_cpus=32"]), nodes=cpu_only)[0].startswith(
        "runner.clip_stage_cpus=32"
    )


def test_a_gpu_request_on_a_cpu_only_ray_cluster_exits_2_without_hanging(tmp_path, capsys, demo_corpus):
    """The hang of issue 15: a model backend with a GPU share on a machine without a GPU."""
    rc = main(
        [
            "build",
            "--config",
            "demo",
            "--input",
            str(demo_corpus[0]),
            "--output",
            str(tmp_path / "out"),
            "--no-progress",
            "--set",
            "flow.backend=raft_small",
            "--set",
            "flow.num_gpus=1",
            "--set",
            "runner.check_weights=false",
            "--set",
            "runner.num_cpus=2",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "flow.num_gpus=1 but the Ray cluster has no GPU; set flow.num_gpus=0 to run the flow stage on CPU" in err
    assert not (tmp_path / "out" / "run.json").exists()
