"""One long video on a 2-worker-node Ray cluster: one task, or work units spread over the nodes?

    python benchmarks/long_video.py [--shots 30] [--shot-s 4] [--unit-s 20] [--size 320x240] [--set K=V ...]

Writes one synthetic clip (``--shots`` static-camera shots of ``--shot-s`` seconds, one moving object
each, hard cuts between), then builds it twice on a fresh multi-node local cluster
(jobs/local_cluster.py: a head with 0 CPUs and two 1-CPU worker nodes, after an untimed warm-up
build): with ``input.unit_s=0`` (the clip is one task, so one core works on it) and with
``input.unit_s=--unit-s`` (spans of about that length, one task each). Prints the work units,
samples, wall seconds and pairs/s of each, and the speed-up; the two outputs hold different pairs
(a span boundary ends a shot), so the samples are counted, not compared.
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
    ap.add_argument("--shots", type=int, default=30)
    ap.add_argument("--shot-s", type=float, default=4.0)
    ap.add_argument("--unit-s", type=float, default=20.0)
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--size", default="320x240")
    ap.add_argument("--config", default="demo")
    ap.add_argument("--set", action="append", default=[])
    a = ap.parse_args()
    from vid2pair.pipeline.synthetic import make_demo_corpus, write_shots_video

    w, h = (int(x) for x in a.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="v2p-long-"))
    write_shots_video(work / "videos" / "long.mp4", a.shots, w, h, a.shot_s, a.fps)
    make_demo_corpus(work / "warmup", n_static=2, n_moving_camera=0, seed=3)
    print(
        f"clip: {a.shots} shots x {a.shot_s:g} s = {a.shots * a.shot_s:g} s at {w}x{h}, {a.fps:g} fps; "
        f"preset {a.config}; 2 worker nodes of 1 CPU"
    )
    rates = {}
    for unit_s in (0.0, a.unit_s):
        cmd = [
            sys.executable,
            str(ROOT / "jobs" / "local_cluster.py"),
            "--workers",
            "2",
            "--cpus-per-worker",
            "1",
            "--config",
            a.config,
            "--input",
            str(work / "videos"),
            "--output",
            str(work / f"out{unit_s:g}"),
            "--warmup",
            str(work / "warmup"),
            "--set",
            f"input.unit_s={unit_s:g}",
        ]
        for s in a.set:
            cmd += ["--set", s]
        r = subprocess.run(cmd, capture_output=True, text=True, check=True)
        res = json.loads(r.stdout.strip().splitlines()[-1])
        s = res["summary"]
        rates[unit_s] = s["samples"] / res["wall_s"]
        print(
            f"input.unit_s={unit_s:g}: {s['work_units']} work unit(s), {s['samples']} pairs in {s['shards']} "
            f"shard(s), {res['wall_s']:.1f} s = {rates[unit_s]:.2f} pairs/s "
            f"(all inputs accounted: {s['all_inputs_accounted']})",
            flush=True,
        )
    print(f"speed-up from splitting: {rates[a.unit_s] / rates[0.0]:.2f}x pairs/s")


if __name__ == "__main__":
    main()
