"""Scaling from 1 to 2 worker nodes on a real multi-node Ray cluster on this machine.

Each run starts a fresh cluster (head with 0 CPUs + N worker nodes of 1 CPU, each its own raylet,
jobs/local_cluster.py), builds 2 warm-up clips (untimed: worker processes, imports and decode
children start as they would once in a long run), then the same synthetic corpus; throughput
excludes cluster start-up and warm-up.
On a 2-core machine 2 one-CPU nodes is the most that can scale.

It also prints the driver's CPU seconds (during the build) and peak RSS for each run, with the
workers writing the shards (``runner.shard_writers=workers``: the driver gets records and commits)
and, on 2 nodes, with the driver writing them (every sample's bytes pass through it).

Usage: python benchmarks/cluster_scaling.py [--clips 16] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=16)
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    from vid2pair.pipeline.synthetic import make_demo_corpus

    work = Path(tempfile.mkdtemp(prefix="v2p-scale-"))
    make_demo_corpus(work / "videos", n_static=a.clips, n_moving_camera=0, seed=2)
    make_demo_corpus(work / "warmup", n_static=2, n_moving_camera=0, seed=3)
    rates = {}
    for n, writers in ((1, "workers"), (2, "workers"), (2, "driver")):
        out = work / f"out{n}{writers}"
        cmd = [
            sys.executable,
            str(ROOT / "jobs" / "local_cluster.py"),
            "--workers",
            str(n),
            "--cpus-per-worker",
            "1",
            "--input",
            str(work / "videos"),
            "--output",
            str(out),
            "--warmup",
            str(work / "warmup"),
            "--set",
            f"runner.shard_writers={writers}",
        ]
        for s in a.set:
            cmd += ["--set", s]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        n_pairs, drv = res["summary"]["samples"], res["driver"]
        rates[n, writers] = n_pairs / res["wall_s"]
        mib = sum(p.stat().st_size for p in (out / "shards").glob("*.tar")) / 2**20
        print(
            f"{n} worker node(s), shards written by the {writers}: {n_pairs} pairs ({mib:.1f} MiB of shards) in "
            f"{res['wall_s']:.1f} s = {rates[n, writers]:.2f} pairs/s (after an untimed {res['warmup_s']:.1f} s "
            f"warm-up build of 2 clips); driver {drv['cpu_s']:.1f} CPU s "
            f"({1000 * drv['cpu_s'] / max(n_pairs, 1):.0f} ms a pair), peak RSS {drv['peak_rss_mib']:.0f} MiB",
            flush=True,
        )
    print(f"scaling 1 -> 2 nodes: {rates[2, 'workers'] / rates[1, 'workers']:.2f}x")


if __name__ == "__main__":
    main()
