"""Pipeline throughput against the bound implied by the summed stage costs, on the demo data.

Prints, in one run:
  * each stage's cost in ms per written pair, measured in process (no isolation) on the work a build
    does: the stages fused with the clip stage run with it, so spare candidates and retries that the
    stages reject are counted, whatever the corpus;
  * the bound those costs imply: 1 / sum, in pairs/s on one core;
  * pairs/s of the local runner (1 CPU, production settings incl. process isolation) and of the
    Ray runner on 2 CPUs (Ray start-up and a 2-clip warm-up build excluded and reported
    separately), each as a ratio to the bound;
  * the cost of isolation per clip; written samples per CPU-second of each runner;
  * peak RSS of the local runner for 10 and for 50 clips (streaming: it must not grow).

Usage: python benchmarks/throughput.py [--clips 12] [--size 240x320] [--skip-rss] [--skip-ray]

``--size 576x1024`` runs the same measurement at the papers' resolution: the clips are rendered at
that size and the pipeline works at it (``frame.size``).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def stage_costs(cfg, tasks):
    """Each stage's cost in ms per written pair, measured in process on the work a build really does:
    the clip stage runs with the stages fused with it, as in the local runner's isolation child, so
    the spare candidates drawn for rejected pairs (``pairs.oversample``) and the retries
    (``pairs.retry_shorter``) are counted. Returns (costs, written pairs, candidate pairs)."""
    import webdataset  # noqa: F401  (a one-off 2-3 s import; not a per-pair cost)

    from vid2pair.core.items import PairItem
    from vid2pair.pipeline.io import OutputWriter
    from vid2pair.pipeline.plan import build_pair_stages, fused_prefix, pair_classes
    from vid2pair.pipeline.unit import ClipUnit, _UnitWork

    cfg.isolation.mode = "none"
    classes = pair_classes(cfg)
    fused = fused_prefix(cfg, classes)
    unit = ClipUnit(cfg, fused)
    # in process: its fused stages are timed below
    unit._work = _UnitWork(cfg, unit.clip_cls, fused, classes[len(fused) :])
    rest = build_pair_stages(cfg, classes)[len(fused) :]
    for st in rest:  # load models outside the timing
        if hasattr(st, "backend"):
            _ = st.backend
    t = {"clip (probe+shots+static+pairs+decode)": 0.0, **{S.name: 0.0 for S in classes}, "write": 0.0}
    candidates = [0]

    def timed(st):
        call = st.__call__

        def run(items):
            t0 = time.perf_counter()
            try:
                return call(items)
            finally:
                t[st.name] += time.perf_counter() - t0

        return run

    all_items = []
    for task in tasks:
        t0 = time.perf_counter()
        inner0 = sum(v for k, v in t.items() if k in {S.name for S in fused})
        if not getattr(unit._work, "_timed", False):
            unit._work.fused = [_Wrapped(st, timed(st)) for st in unit._work.fused]
            unit._work._timed = True
        items = list(unit.iter(task))
        inner = sum(v for k, v in t.items() if k in {S.name for S in fused}) - inner0
        t["clip (probe+shots+static+pairs+decode)"] += time.perf_counter() - t0 - inner
        candidates[0] += sum(1 for x in items if isinstance(x, PairItem)) + sum(
            1 for x in items if getattr(x, "level", "") == "pair"
        )
        for st in rest:
            t0 = time.perf_counter()
            items = st(items)
            t[st.name] += time.perf_counter() - t0
        all_items += items
    cfg.isolation.mode = "process"
    with tempfile.TemporaryDirectory() as d:
        w = OutputWriter(d, cfg, tasks)
        t0 = time.perf_counter()
        for it in all_items:
            w.add(it)
        t["write"] = time.perf_counter() - t0
    n = sum(isinstance(i, PairItem) for i in all_items)
    return {k: 1000 * v / n for k, v in t.items()}, n, candidates[0]


class _Wrapped:
    """A stage whose calls are timed (the rest of its interface passes through)."""

    def __init__(self, st, run):
        self._st, self._run = st, run

    def __call__(self, items):
        return self._run(items)

    def __getattr__(self, k):
        return getattr(self._st, k)


def _cpu_s() -> float:
    """CPU seconds of this process and its (waited-for and running) children."""
    import resource

    import psutil

    me = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    live = 0.0
    for c in psutil.Process().children(recursive=True):
        try:
            ct = c.cpu_times()
            live += ct.user + ct.system
        except psutil.NoSuchProcess:
            pass
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime + live


def timed_build(cfg, videos, out):
    from vid2pair.pipeline.runners import build

    t0 = time.perf_counter()
    s = build(cfg, str(videos), out, log_summary=False)
    return s["samples"], time.perf_counter() - t0


def isolation_cost(cfg, tasks):
    import copy

    from vid2pair.pipeline.unit import ClipUnit

    stages = {}
    for mode in ("none", "process"):
        c = copy.deepcopy(cfg)
        c.isolation.mode = mode
        stages[mode] = ClipUnit(c)
        stages[mode](tasks[0])  # warm: the child's start-up is paid once per worker, not per clip
    res = {"none": 0.0, "process": 0.0}
    for _ in range(2):  # interleaved, so both modes see the same machine state
        for task in tasks:
            for mode, st in stages.items():
                t0 = time.perf_counter()
                st(task)
                res[mode] += time.perf_counter() - t0
    for st in stages.values():
        st.close()
    n = 2 * len(tasks)
    return 1000 * res["none"] / n, 1000 * res["process"] / n


RSS_SNIPPET = """
import resource, sys
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.runners import build
cfg = load_config("demo", ["runner.name=local", "runner.progress=false", *{extra!r}])
build(cfg, {videos!r}, {out!r}, log_summary=False)
me = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(me, kids)
"""


def peak_rss(videos, out, extra=()):
    code = RSS_SNIPPET.format(root=str(ROOT), videos=str(videos), out=str(out), extra=list(extra))
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    me, kids = map(int, r.stdout.split()[-2:])
    return me / 1024, kids / 1024


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=12)
    ap.add_argument("--skip-rss", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    ap.add_argument("--rss", default="10,50", help="clip counts for the peak-RSS runs (e.g. 10,100)")
    ap.add_argument("--size", default="240x320", help="HxW of the clips and of the pipeline's frames")
    a = ap.parse_args()
    h, w = map(int, a.size.lower().split("x"))
    size = [f"frame.size=[{h}, {w}]"]

    import copy

    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.io import input_root, list_inputs, make_tasks
    from vid2pair.pipeline.runners import set_threads
    from vid2pair.pipeline.synthetic import make_demo_corpus

    set_threads(1)  # every cost and rate below is per core: one OpenCV / torch thread
    work = Path(tempfile.mkdtemp(prefix="v2p-bench-"))
    videos = work / "videos"
    make_demo_corpus(videos, n_static=a.clips, n_moving_camera=0, seed=0, width=w, height=h)
    base = load_config("demo", ["runner.progress=false", *size])
    # the same clip ids as the build (ids hash the path under the input root): the same draws, the same work
    tasks, _ = make_tasks(
        list_inputs(str(videos), base.input.extensions), base.output.clips_per_shard, input_root(str(videos))
    )

    costs, n, cands = stage_costs(copy.deepcopy(base), tasks)
    total = sum(costs.values())
    bound = 1000.0 / total
    print(
        f"demo data: {len(tasks)} clips, {n} pairs written of {cands} candidates (spares and retries "
        f"included), {w}x{h}, DIS flow"
    )
    print("stage costs (ms/pair, alone, one core):")
    for k, v in costs.items():
        print(f"  {k:<40} {v:8.2f}")
    print(f"  {'sum':<40} {total:8.2f}   -> bound {bound:.2f} pairs/s on one core")

    none_ms, proc_ms = isolation_cost(copy.deepcopy(base), tasks[:6])
    print(
        f"isolation: clip stage {none_ms:.1f} ms/clip in process, {proc_ms:.1f} ms/clip in the child "
        f"process -> {proc_ms - none_ms:+.1f} ms per clip"
    )

    cfg = copy.deepcopy(base)
    cfg.runner.name = "local"
    cpu0 = _cpu_s()
    n_local, wall = timed_build(cfg, videos, work / "out_local")
    local = n_local / wall
    cpu = _cpu_s() - cpu0
    print(
        f"local runner (1 CPU):  {local:.2f} pairs/s = {local / bound:.2f} x bound  (target >= 0.9); "
        f"{n_local / cpu:.3f} written samples per CPU-second ({cpu:.1f} CPU-s, this process and its children)"
    )

    if not a.skip_ray:
        import ray

        from vid2pair.pipeline.runners import init_ray

        cfg = copy.deepcopy(base)
        cfg.runner.name, cfg.runner.num_cpus = "ray", 2
        t0 = time.perf_counter()
        init_ray(cfg)
        t_init = time.perf_counter() - t0
        # warm-up: worker processes, their imports and decode children start once per worker, as
        # they would at the start of a long run (not a per-pair cost)
        make_demo_corpus(work / "warmup", n_static=2, n_moving_camera=0, seed=9, width=w, height=h)
        _, t_warm = timed_build(cfg, work / "warmup", work / "out_warm")
        n_ray, wall = timed_build(cfg, videos, work / "out_ray")
        r = n_ray / wall
        print(
            f"  ray: {n_ray} samples in {wall:.1f} s wall on 2 CPUs = {n_ray / (2 * wall):.3f} written samples "
            f"per CPU-second"
        )
        print(
            f"ray runner (2 CPUs):   {r:.2f} pairs/s = {r / bound:.2f} x bound  (target >= 1.7; "
            f"ray.init {t_init:.1f} s and a {t_warm:.1f} s warm-up build of 2 clips excluded)"
        )
        ray.shutdown()

    if not a.skip_rss:
        # memory must not grow with the input count (the pipeline streams); tracking and collage are
        # off here to keep the runs short; they work per pair and keep nothing across pairs
        extra = ["track.enabled=false", "collage.enabled=false", *size]
        for k in map(int, a.rss.split(",")):
            v = work / f"rss{k}"
            make_demo_corpus(v, n_static=k, n_moving_camera=0, seed=1, width=w, height=h)
            t0 = time.perf_counter()
            me, kids = peak_rss(v, work / f"out_rss{k}", extra)
            print(
                f"peak RSS, {k:>3} clips: driver {me:7.1f} MiB, decode child {kids:7.1f} MiB "
                f"({time.perf_counter() - t0:.0f} s, {', '.join(extra)})"
            )


if __name__ == "__main__":
    main()
