"""Scaling from 1 to 2 worker nodes on a real multi-node Ray cluster on this machine.

Each run starts a fresh cluster (head with 0 CPUs + N worker nodes of 1 CPU, each its own raylet,
jobs/local_cluster.py), builds 2 warm-up clips (untimed: worker processes, imports and decode
children start as they would once in a long run), then the same synthetic corpus; throughput
excludes cluster start-up and warm-up.
On a 2-core machine 2 one-CPU nodes is the most that can scale.

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
    for n in (1, 2):
        cmd = [sys.executable, str(ROOT / "jobs" / "local_cluster.py"), "--workers", str(n), "--cpus-per-worker", "1",
               "--input", str(work / "videos"), "--output", str(work / f"out{n}"), "--warmup", str(work / "warmup")]
        for s in a.set:
            cmd += ["--set", s]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        rates[n] = res["summary"]["samples"] / res["wall_s"]
        print(f"{n} worker node(s): {res['summary']['samples']} pairs in {res['wall_s']:.1f} s = "
              f"{rates[n]:.2f} pairs/s "
              f"(after an untimed {res['warmup_s']:.1f} s warm-up build of 2 clips)")
    print(f"scaling 1 -> 2 nodes: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
