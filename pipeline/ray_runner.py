"""The Ray runner: a Ray Data pipeline of one retryable task per clip (or work unit); each model
stage is a pool of actors that get only the arrays the stage reads; the workers may write the shards."""

from __future__ import annotations

import logging
import os
from dataclasses import asdict
from typing import Iterator

import numpy as np

from vid2pair.core.items import ClipDone, ClipTask, PairItem, item_to_row, row_to_item
from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.io import OutputWriter, stage_sample, write_chunk
from vid2pair.pipeline.local import _bar, set_threads
from vid2pair.pipeline.plan import (
    batch_size_of,
    build_stage,
    fused_prefix,
    pair_classes,
)
from vid2pair.pipeline.storage import is_uri
from vid2pair.pipeline.unit import ClipUnit, run_items

log = logging.getLogger("vid2pair")


def _writable(v):
    return v.copy() if getattr(v, "flags", None) is not None and not v.flags.writeable else v


class _ModelActor:
    """A Ray actor holding one model stage (its model loaded once, with its GPU share). The clip tasks
    call :meth:`run` with slim pairs: only the arrays the stage reads (:func:`~pipeline.transfer.slim`);
    what it sends back leaves out the arrays it did not change (:func:`~pipeline.transfer.mark_unchanged`).
    It counts what it received (:meth:`io`), so a run can show that nothing else reached it."""

    def __init__(self, cfg, cls: type, upstream: tuple, downstream: tuple = ()):
        set_threads(cfg.runner.threads_per_worker)
        self.stage = build_stage(cfg, cls, upstream, downstream)
        self.stats = {"calls": 0, "pairs": 0, "bytes_in": 0, "bytes_out": 0, "arrays": set()}

    def run(self, items: list) -> list:
        from vid2pair.pipeline.transfer import mark_unchanged

        st = self.stats
        before = [it.arrays for it in items]  # as received (read-only shared memory, mostly)
        for it in items:  # the stage works on copies: it may write in place
            it.arrays = {k: v.copy() if isinstance(v, np.ndarray) else v for k, v in it.arrays.items()}
        sent = [dict(it.arrays) for it in items]
        st["calls"] += 1
        st["pairs"] += len(items)
        for a in sent:
            st["arrays"] |= set(a)
            st["bytes_in"] += sum(getattr(v, "nbytes", 0) for v in a.values())
        out = self.stage(list(items))
        for it, a, b in zip(out, sent, before):
            if isinstance(it, PairItem):
                it.arrays = mark_unchanged(a, it.arrays, b)
                st["bytes_out"] += sum(getattr(v, "nbytes", 0) for v in it.arrays.values())
        return out

    def io(self) -> dict:
        return {**self.stats, "arrays": sorted(self.stats["arrays"])}


class _RemoteStage:
    """Stands in, inside a clip task, for the model stage ``cls`` running in ``actors``: each batch of
    pairs goes to one actor as slim copies, the answers are merged back into the whole pairs."""

    def __init__(self, cls: type, actors: list):
        from vid2pair.pipeline.plan import signal_previews

        self.name, self.reads, self.actors = cls.name, tuple(cls.reads), list(actors)
        self.previews = signal_previews()
        self._next = os.getpid()

    def __call__(self, items: list) -> list:
        import ray

        from vid2pair.pipeline.transfer import merge_back, slim

        pairs = [i for i in items if isinstance(i, PairItem)]
        if not pairs:
            return items
        self._next += 1
        actor = self.actors[self._next % len(self.actors)]
        back = ray.get(actor.run.remote(slim(pairs, self.reads)))
        for o in back:
            if isinstance(o, PairItem):
                o.arrays = {k: _writable(v) for k, v in o.arrays.items()}
        done = {id(p): merge_back(p, o, self.reads, self.previews) for p, o in zip(pairs, back)}
        return [done.get(id(i), i) for i in items]

    def close(self) -> None:
        pass


_CLIP_UNITS: dict = {}


def _clip_rows(
    row: dict, cfg, classes: tuple, clip_cls: type, actors: dict, stage_root: str | None = None
) -> Iterator[dict]:
    """One clip (or work unit) through every pair stage, as a Ray task: the clip stage and the CPU
    stages before the first model stage in the isolation child, the rest here, the model stages by
    calling their actors (``actors``: stage name -> handles). Tasks (not actors) so that a task lost
    with its node or worker is simply retried elsewhere; the unit (and its warm isolation child) is
    cached per worker process, which Ray reuses across tasks. ``stage_root``: the output, when the
    workers write the shards."""
    key = (cfg.fingerprint() + repr(cfg.isolation), classes, clip_cls, tuple(sorted(actors)))
    cached = _CLIP_UNITS.get(key)
    if cached is None:
        set_threads(cfg.runner.threads_per_worker)
        fused = fused_prefix(cfg, classes)
        rest = [
            _RemoteStage(S, actors[S.name]) if S.name in actors else build_stage(cfg, S, classes[:k], classes[k + 1 :])
            for k, S in enumerate(classes)
            if k >= len(fused)
        ]
        cached = _CLIP_UNITS[key] = (
            ClipUnit(cfg, fused, clip_cls, after=classes[len(fused) :]),
            rest,
            batch_size_of(cfg, classes[len(fused) :]),
        )
    unit, rest, batch = cached
    task = ClipTask(
        source=str(row["source"]),
        clip_idx=int(row["clip_idx"]),
        chunk=int(row["chunk"]),
        clip_id=str(row["clip_id"]),
        unit=int(row["unit"]),
        units=int(row["units"]),
        start_s=float(row["start_s"]),
        end_s=float(row["end_s"]),
    )
    for it in run_items(unit, rest, task, batch):  # a generator: Ray Data builds the blocks as pairs arrive
        yield item_to_row(stage_sample(stage_root, it) if stage_root else it)


def workers_write(cfg, out_dir) -> bool:
    """Whether the Ray workers write the shards (``runner.shard_writers``; see its doc for ``auto``)."""
    mode = cfg.runner.shard_writers
    if mode != "auto":
        return mode == "workers"
    if is_uri(str(out_dir)):
        return True
    import ray

    here = ray.util.get_node_ip_address()
    return all(n.get("NodeManagerAddress") == here for n in ray.nodes() if n.get("Alive"))


def init_ray(cfg) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw = dict(ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=True)
    address = cfg.runner.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kw)
    else:
        # a private local instance: a bare ray.init() would attach to any cluster that `ray start`
        # (or another tool) left on this machine, and die with it
        ray.init(address="local", num_cpus=cfg.runner.num_cpus, **kw)


def run_ray(cfg, tasks: list[ClipTask], writer: OutputWriter, stages: tuple = STAGES) -> None:
    import ray
    import ray.data

    init_ray(cfg)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # deterministic arrival; chunks complete in order
    # one progress bar: ours (clips, samples, shards). Ray Data's operator bars would print a
    # second set, and log lines every few seconds when stderr is not a terminal (the dashboard
    # shows the operators on a cluster)
    ctx.enable_progress_bars = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # no per-dataset INFO lines in the user's terminal
    ctx.print_on_execution_start = False
    classes = pair_classes(cfg, stages)
    # a model stage is a pool of actors, one model each with its GPU share; the clip tasks call them
    # with only the arrays the stage reads, so frames never travel to a stage that does not read
    # them, and an unchanged array never travels back
    pools = {
        S.name: [
            ray.remote(_ModelActor)
            .options(num_gpus=res.num_gpus or None, num_cpus=res.num_cpus, max_restarts=-1, max_task_retries=3)
            .remote(cfg, S, classes[:k], classes[k + 1 :])
            for _ in range(res.actors)
        ]
        for k, S in enumerate(classes)
        for res in [S.resources(cfg)]
        if res is not None
    }
    # the workers write the shards: the clip task stages each sample's members under the output, a
    # Ray task writes each complete chunk, the driver only gets records and commits
    root = writer.root if workers_write(cfg, writer.root) else None
    if root:
        write_task = ray.remote(num_cpus=0.1, max_retries=3)(write_chunk)
        writer.chunk_writer = lambda *a: ray.get(write_task.remote(*a))
    ds = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=max(1, len(tasks)))
    # one retryable task per clip or work unit, about one core each (a bit less, so the model actors
    # always fit); with weight-free CPU backends no frame leaves it
    ds = ds.flat_map(
        _clip_rows,
        fn_kwargs={"cfg": cfg, "classes": classes, "clip_cls": stages[0], "actors": pools, "stage_root": root},
        num_cpus=cfg.runner.clip_stage_cpus,
    )
    try:
        _drain(ds, tasks, writer, cfg)
    finally:
        if pools:
            writer.model_io = _model_io(pools)
            for handles in pools.values():
                for h in handles:
                    ray.kill(h)


def _model_io(pools: dict) -> dict:
    """What each model stage's actors received, summed over the pool (``summary.json``: model_io)."""
    import ray

    out = {}
    for name, handles in pools.items():
        try:
            parts = ray.get([h.io.remote() for h in handles], timeout=30)
        except Exception:  # an actor lost at the end: the figures are only a report
            continue
        out[name] = {
            "actors": len(handles),
            "calls": sum(p["calls"] for p in parts),
            "pairs": sum(p["pairs"] for p in parts),
            "mib_in": round(sum(p["bytes_in"] for p in parts) / 2**20, 3),
            "mib_out": round(sum(p["bytes_out"] for p in parts) / 2**20, 3),
            "arrays": sorted({k for p in parts for k in p["arrays"]}),
        }
    return out


def _drain(ds, tasks, writer, cfg) -> None:
    with _bar(tasks, cfg.runner.progress) as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                it = row_to_item(row)
                writer.add(it)
                if isinstance(it, ClipDone):
                    bar.update(1)
                    bar.set_postfix(samples=writer.new_samples, shards=len(writer.written_chunks))
