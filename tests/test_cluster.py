"""A real multi-node Ray cluster on this machine (head + 2 worker nodes, each its own raylet):
the pipeline completes with the full key set when a worker node is removed or a worker process is
SIGKILLed mid-run. Each scenario runs jobs/local_cluster.py in its own process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.synthetic import make_demo_corpus
from vid2pair.pipeline.verify import verify_output

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("cl")
    make_demo_corpus(d, n_static=8, n_moving_camera=0, seed=3)
    ref = tmp_path_factory.mktemp("ref")
    build(
        load_config("demo", ["runner.name=local", "runner.progress=false", "output.clips_per_shard=1"]),
        str(d),
        ref,
        log_summary=False,
    )
    return d, sorted(read_index(ref)["key"])


@pytest.mark.parametrize("chaos", [None, "kill_worker", "remove_node"])
def test_multinode_cluster_survives(corpus, tmp_path, chaos):
    d, ref_keys = corpus
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "local_cluster.py"),
        "--workers",
        "2",
        "--input",
        str(d),
        "--output",
        str(tmp_path),
        "--set",
        "output.clips_per_shard=1",
    ]
    if chaos:
        cmd += ["--chaos", chaos]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["nodes"] == 3
    if chaos:
        assert res["chaos"] and "no clip worker" not in res["chaos"][0], res
    keys = list(read_index(tmp_path)["key"])
    assert len(keys) == len(set(keys)) and sorted(keys) == ref_keys
    ok, report = verify_output(tmp_path)
    assert ok, report


def test_killing_a_worker_mid_way_through_a_long_clip_costs_one_unit(tmp_path):
    """A 40-s clip split into four 10-s work units (input.unit_s=10) spreads over both worker nodes;
    a clip worker SIGKILLed while it runs a unit is retried, and the output equals a straight local
    run: the same keys and the same shards, byte for byte."""
    from vid2pair.pipeline.synthetic import write_shots_video

    d = tmp_path / "in"
    write_shots_video(d / "long.mp4", 10, 320, 240, 4.0, 12.0)
    opts = ["input.unit_s=10"]
    ref = tmp_path / "ref"
    s_ref = build(
        load_config("demo", ["runner.name=local", "runner.progress=false", *opts]), str(d), ref, log_summary=False
    )
    assert s_ref["work_units"] == 4 and s_ref["shards"] == 4
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "local_cluster.py"),
        "--workers",
        "2",
        "--input",
        str(d),
        "--output",
        str(out),
        "--chaos",
        "kill_worker",
        "--set",
        *opts,
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["chaos"] and res["chaos"][0].startswith("SIGKILLed"), res
    assert res["summary"]["work_units"] == 4 and res["summary"]["all_inputs_accounted"]
    assert list(read_index(out)["key"]) == list(read_index(ref)["key"])
    tars = lambda o: {p.name: p.read_bytes() for p in sorted((o / "shards").glob("*.tar"))}  # noqa: E731
    assert tars(out) == tars(ref) and len(tars(ref)) == 4
    ok, report = verify_output(out)
    assert ok, report


def test_default_runner_does_not_join_another_cluster_on_the_machine(tmp_path):
    """Without --ray-address, vid2pair starts a private local Ray. A bare ray.init() would attach to
    the newest `ray start` cluster on the machine (here one started by ray.cluster_utils) and die
    with it when its owner shuts it down."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    try:
        code = (
            "import json, ray; from vid2pair.pipeline.config import load_config; "
            "from vid2pair.pipeline.runners import init_ray; "
            "init_ray(load_config('demo', ['runner.num_cpus=1'])); "
            "print(json.dumps({'gcs': ray.get_runtime_context().gcs_address}))"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=180, cwd=ROOT, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        gcs = json.loads(r.stdout.strip().splitlines()[-1])["gcs"]
        assert gcs and gcs != cluster.address, (gcs, cluster.address)
    finally:
        cluster.shutdown()
