"""Runners wire the stages of :mod:`pipeline.graph` together; they add no logic of their own.

* ``local``: in process, clip after clip. For debugging and fast tests.
* ``ray``: Ray Data. The clip stage is a ``flat_map`` over clips, a model stage (flow with RAFT /
  SEA-RAFT, CoTracker, SAM / DPT) an actor pool (``flow.actors`` actors with ``flow.num_gpus`` GPUs
  each, ...), the CPU pair stages between them fused tasks; light stages before the first model
  stage run inside the clip task. The driver streams the results into the
  :class:`~pipeline.io.OutputWriter`.

Both runners feed the same stage objects the same tasks, so they give the same samples.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from dataclasses import asdict

from tqdm import tqdm

from vid2pair.pipeline.graph import ClipStage, build_stages, light_prefix, model_stage_options, run_items
from vid2pair.pipeline.io import OutputWriter
from vid2pair.core.items import ClipDone, ClipTask, item_to_row, row_to_item, rows_to_table

log = logging.getLogger("vid2pair")


def _bar(total: int, enabled: bool, desc: str):
    return tqdm(total=total, desc=desc, unit="clip", disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_local(cfg, tasks: list[ClipTask], writer: OutputWriter) -> None:
    set_threads(cfg.runner.threads_per_worker)
    _, pair_stages = build_stages(cfg)
    fused = light_prefix(cfg, [s.name for s in pair_stages])
    clip_stage, pair_stages = ClipStage(cfg, fused), pair_stages[len(fused):]
    with _bar(len(tasks), cfg.runner.progress, "clips") as bar:
        for task in tasks:
            for it in run_items(clip_stage, pair_stages, task):
                writer.add(it)
            bar.update(1)
            bar.set_postfix(samples=writer.new_samples, shards=len(writer.written_chunks))


# ---------------------------------------------------------------- Ray Data

def set_threads(n: int) -> None:
    """CPU threads of OpenCV and torch in this process (workers parallelise across clips instead)."""
    import cv2

    cv2.setNumThreads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)


_CLIP_STAGES: dict = {}


def _clip_rows(row: dict, cfg, names: tuple = ()) -> list[dict]:
    """Clip stage (then the pair stages ``names``, if any) as a Ray task. Tasks (not actors) so that
    a task lost with its node or worker is simply retried elsewhere; the stages (and the warm decode
    child process) are cached per worker process, which Ray reuses across tasks."""
    key = (cfg.fingerprint() + repr(cfg.isolation), names)
    stage = _CLIP_STAGES.get(key)
    if stage is None:
        set_threads(cfg.runner.threads_per_worker)
        stage = _CLIP_STAGES[key] = ClipStage(cfg, names)
    task = ClipTask(source=row["source"], clip_idx=int(row["clip_idx"]), chunk=int(row["chunk"]),
                    clip_id=row["clip_id"])
    return [item_to_row(i) for i in stage(task)]


class _PairFn:
    """Runs pair stages ``names`` (in order) on a pyarrow batch of item rows."""

    def __init__(self, cfg, names: tuple):
        set_threads(cfg.runner.threads_per_worker)
        stages = {s.name: s for s in build_stages(cfg)[1]}
        self.stages = [stages[n] for n in names]

    def __call__(self, batch):
        items = [row_to_item(r) for r in batch.to_pylist()]
        for st in self.stages:
            items = st(items)
        return rows_to_table([item_to_row(i) for i in items])


_PAIR_STAGES: dict = {}


def _apply_pair_stages(batch, cfg, names: tuple):
    key = (cfg.fingerprint(), names)
    fn = _PAIR_STAGES.get(key)
    if fn is None:
        fn = _PAIR_STAGES[key] = _PairFn(cfg, names)
    return fn(batch)


def init_ray(cfg) -> None:
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    kw = dict(ignore_reinit_error=True, include_dashboard=False, logging_level=logging.WARNING,
              log_to_driver=True)
    address = cfg.runner.ray_address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, **kw)
    else:
        # a private local instance: a bare ray.init() would attach to any cluster that `ray start`
        # (or another tool) left on this machine, and die with it
        ray.init(address="local", num_cpus=cfg.runner.num_cpus, **kw)


def run_ray(cfg, tasks: list[ClipTask], writer: OutputWriter) -> None:
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
    _, pair_stages = build_stages(cfg)
    names = [s.name for s in pair_stages]
    ds = ray.data.from_items([asdict(t) for t in tasks], override_num_blocks=max(1, len(tasks)))
    # pair stages: a stage holding a model runs in an actor pool (one model per actor, with its GPU
    # share); consecutive light stages run together as plain retryable tasks, and the light stages
    # before the first model stage run inside the clip task (with weight-free CPU backends that is
    # the whole pipeline: no frames cross the object store)
    fused = light_prefix(cfg, names)
    groups: list[tuple[list[str], dict | None]] = []
    for name in names[len(fused):]:
        opts = model_stage_options(cfg, name)
        if opts is None and groups and groups[-1][1] is None:
            groups[-1][0].append(name)
        else:
            groups.append(([name], opts))
    # clip stage: retryable tasks, about one core each (a bit less, so the flow actors always fit)
    # (Ray Data retries a task lost with its worker or node; decode crashes never kill the worker)
    ds = ds.flat_map(_clip_rows, fn_kwargs={"cfg": cfg, "names": fused}, num_cpus=cfg.runner.clip_stage_cpus)
    for group, opts in groups:
        if opts is not None:
            ds = ds.map_batches(_PairFn, fn_constructor_args=(cfg, tuple(group)), batch_format="pyarrow",
                                batch_size=opts["batch_size"], compute=ray.data.ActorPoolStrategy(size=opts["size"]),
                                num_gpus=opts["num_gpus"] or None, num_cpus=opts["num_cpus"])
        else:
            ds = ds.map_batches(_apply_pair_stages, fn_kwargs={"cfg": cfg, "names": tuple(group)},
                                batch_format="pyarrow", batch_size=4, num_cpus=cfg.runner.pair_stage_cpus)
    with _bar(len(tasks), cfg.runner.progress, "clips") as bar:
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for row in batch.to_pylist():
                it = row_to_item(row)
                writer.add(it)
                if isinstance(it, ClipDone):
                    bar.update(1)
                    bar.set_postfix(samples=writer.new_samples, shards=len(writer.written_chunks))


RUNNERS = {"local": run_local, "ray": run_ray}


def build(cfg, input_spec: str, out_dir, log_summary: bool = True) -> dict:
    """List inputs, skip finished chunks, run, commit, summarise. Returns the summary dict."""
    from vid2pair.pipeline.io import format_summary, list_inputs, make_tasks, summarize

    t0 = time.time()
    if cfg.runner.check_weights:
        from vid2pair.pipeline.models import MissingWeightsError, check_build_weights

        problems = check_build_weights(cfg)
        if problems:  # otherwise every pair would end as a *_backend_unavailable reject
            raise MissingWeightsError("model stages cannot run (nothing was processed):\n  - "
                                      + "\n  - ".join(p.replace("\n", "\n    ") for p in problems)
                                      + "\n(runner.check_weights=false skips this check, e.g. when only the "
                                        "workers see the model cache)")
    sources = list_inputs(input_spec, cfg.input.extensions)
    tasks, dups = make_tasks(sources, cfg.output.clips_per_shard)
    writer = OutputWriter(out_dir, cfg, tasks, dups)
    todo = writer.pending_tasks
    skipped = len(tasks) - len(todo)
    if skipped and log_summary:
        print(f"resume: {skipped} of {len(tasks)} clips are in finished shards; processing {len(todo)}",
              file=sys.stderr)
    if todo:
        RUNNERS[cfg.runner.name](cfg, todo, writer)
    missing = writer.incomplete_chunks()
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} did not complete (a clip's items were lost); rerun to resume")
    summary = summarize(out_dir, cfg, len(sources), time.time() - t0, cfg.runner.name, writer.new_samples,
                        tasks=tasks, n_duplicates=len(dups))
    if log_summary:
        print(format_summary(summary, out_dir), file=sys.stderr)
    return summary
