"""A real multi-node Ray cluster on one machine (head + N worker nodes, each its own raylet), used by
the tests and the scaling benchmark, and handy for trying cluster behaviour on a laptop.

    python jobs/local_cluster.py --workers 2 --cpus-per-worker 1 --config demo --input DIR --output OUT \
        [--chaos remove_node|kill_worker] [--set key=value ...] [--warmup DIR]

Prints one JSON line: {"summary": ..., "wall_s": ..., "chaos": what was done, "driver": the driver
process's CPU seconds during the build and its peak RSS}.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path


def _busy_clip_workers() -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and cmd.startswith("ray::") and "_clip_rows" in cmd:
            pids.append(int(proc.name))
    return pids


def _chaos(kind: str, cluster, victim, out: Path, log: list) -> None:
    """remove_node: after the first committed shard, remove a worker node.
    kill_worker: SIGKILL a worker process while it is running a clip task."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if kind == "remove_node" and any((out / "_done").glob("*.json")):
            break
        if kind == "kill_worker" and _busy_clip_workers():
            time.sleep(0.3)  # let it get into the clip's work
            break
        time.sleep(0.02)
    if kind == "remove_node":
        cluster.remove_node(victim, allow_graceful=False)
        log.append("removed a worker node")
    elif kind == "kill_worker":
        pids = _busy_clip_workers()
        if pids:
            os.kill(pids[0], signal.SIGKILL)
            log.append(f"SIGKILLed clip worker pid {pids[0]}")
        else:
            log.append("no clip worker process found")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cpus-per-worker", type=int, default=1)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--input", required=True)
    ap.add_argument("--output", required=True)
    ap.add_argument("--chaos", choices=["remove_node", "kill_worker"])
    ap.add_argument("--set", action="append", default=[])
    ap.add_argument(
        "--warmup",
        help="build this input into a scratch output first (untimed): starts the "
        "workers and their decode children, as in a long run",
    )
    a = ap.parse_args()

    import ray
    from ray.cluster_utils import Cluster

    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.runners import build

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})  # the head only drives
    nodes = [cluster.add_node(num_cpus=a.cpus_per_worker) for _ in range(a.workers)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING")
    cfg = load_config(a.config, ["runner.name=ray", "runner.progress=false", *a.set])
    log: list = []
    warm_s = None
    if a.warmup:
        import tempfile

        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as scratch:
            build(cfg, a.warmup, scratch, log_summary=False)
        warm_s = time.perf_counter() - t0
    if a.chaos:
        # the victim is the last node; the clip workers it hosts die with it
        threading.Thread(target=_chaos, args=(a.chaos, cluster, nodes[-1], Path(a.output), log), daemon=True).start()
    import resource

    t0, r0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    summary = build(cfg, a.input, a.output, log_summary=False)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    driver = {
        "cpu_s": round(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime, 2),
        "peak_rss_mib": round(r1.ru_maxrss / 1024, 1),
    }  # the driver process only (not the head's raylet)
    print(
        json.dumps(
            {
                "summary": {
                    k: summary.get(k)
                    for k in (
                        "inputs",
                        "work_units",
                        "samples",
                        "shards",
                        "clips_with_samples",
                        "clips_rejected",
                        "all_inputs_accounted",
                    )
                },
                "wall_s": wall,
                "warmup_s": warm_s,
                "chaos": log,
                "nodes": len(ray.nodes()),
                "driver": driver,
            }
        )
    )
    ray.shutdown()
    cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
