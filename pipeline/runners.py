"""A build: the checks before any work (the stage graph, weights and extras, the output, the inputs,
the cluster's resources), then a runner, then the summary (:func:`build`). Runners wire the stages of
:mod:`pipeline.graph` together; they add no logic of their own.

* ``local`` (:mod:`pipeline.local`): in process, clip after clip. For debugging and fast tests.
* ``ray`` (:mod:`pipeline.ray_runner`): Ray Data. The clip stage is a ``flat_map`` over clips, a
  model stage (flow with RAFT / SEA-RAFT, CoTracker, SAM / DPT) an actor pool (``flow.actors``
  actors with ``flow.num_gpus`` GPUs each, ...), the CPU pair stages between them fused tasks;
  light stages before the first model stage run inside the clip task. The driver streams the results into the
  :class:`~pipeline.io.OutputWriter`.

Both runners feed the same stage objects the same tasks, so they give the same samples.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time

from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.io import OutputWriter
from vid2pair.pipeline.local import _bar, run_local, set_threads  # noqa: F401  (re-exported)
from vid2pair.pipeline.plan import (
    check_arrays,
    pair_classes,
)
from vid2pair.pipeline.ray_runner import init_ray, run_ray, workers_write  # noqa: F401  (re-exported)

log = logging.getLogger("vid2pair")


RUNNERS = {"local": run_local, "ray": run_ray}


@contextlib.contextmanager
def _signals_raise():
    """While a build runs, SIGTERM (and SIGINT) raise KeyboardInterrupt in the main thread, so the
    runners' cleanup runs (isolation children killed, a private Ray instance shut down) and the
    build stops within seconds; the signal number is left in the yielded dict."""
    caught: dict = {}
    if threading.current_thread() is not threading.main_thread():
        yield caught
        return

    def handler(signum, frame):
        caught["signum"] = signum
        raise KeyboardInterrupt

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield caught
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _shutdown_private_ray(cfg) -> None:
    """Stop the local Ray instance this process started (its workers with it); a joined cluster stays."""
    import ray

    if ray.is_initialized() and not (cfg.runner.ray_address or os.environ.get("RAY_ADDRESS")):
        ray.shutdown()


class ResourceError(RuntimeError):
    """A stage asks the Ray cluster for resources no node has; the message names the key and the fix."""


class Interrupted(KeyboardInterrupt):
    """The build was stopped (SIGINT / SIGTERM); committed chunks stay, a rerun resumes."""

    def __init__(self, committed: int, total: int, signum: int = 2):
        super().__init__(f"interrupted: {committed} of {total} chunks committed; rerun the same command to resume")
        self.committed, self.total, self.signum = committed, total, signum


def resource_problems(cfg, stages: tuple = STAGES, nodes: list[dict] | None = None) -> list[str]:
    """What the enabled stages ask of the Ray cluster that no node of ``nodes`` (Ray's node resource
    dicts; default: the connected cluster's live nodes) can give, one message per key."""
    if nodes is None:
        import ray

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    max_gpu = max((float(n.get("GPU", 0)) for n in nodes), default=0.0)
    max_cpu = max((float(n.get("CPU", 0)) for n in nodes), default=0.0)
    out = []
    for S in pair_classes(cfg, stages):
        res = S.resources(cfg)
        if res is None:
            continue
        if res.num_gpus > 0 and max_gpu == 0:
            out.append(
                f"{res.gpu_key}={res.num_gpus:g} but the Ray cluster has no GPU; set {res.gpu_key}=0 to run "
                f"the {S.name} stage on CPU"
            )
        elif res.num_gpus > max_gpu:
            out.append(
                f"{res.gpu_key}={res.num_gpus:g} but no Ray node has more than {max_gpu:g} GPU(s); set "
                f"{res.gpu_key} to at most {max_gpu:g} (a fraction packs several actors on one GPU)"
            )
        if res.num_cpus > max_cpu:
            out.append(f"the {S.name} actors ask for {res.num_cpus:g} CPUs but no Ray node has more than {max_cpu:g}")
    if cfg.runner.clip_stage_cpus > max_cpu:
        out.append(
            f"runner.clip_stage_cpus={cfg.runner.clip_stage_cpus:g} but no Ray node has more than {max_cpu:g} "
            f"CPUs; lower it"
        )
    return out


def check_resources(cfg, stages: tuple = STAGES) -> None:
    """Before any work: every stage's request must fit some node of the cluster, now or (an
    autoscaling cluster) within ``runner.wait_for_resources_s``; else :class:`ResourceError`."""
    wait = cfg.runner.wait_for_resources_s
    if wait is None:  # a private local instance cannot grow; a cluster we join may autoscale
        wait = 0.0 if not (cfg.runner.ray_address or os.environ.get("RAY_ADDRESS")) else 300.0
    deadline = time.monotonic() + wait
    told = False
    while True:
        problems = resource_problems(cfg, stages)
        if not problems:
            return
        if time.monotonic() >= deadline:
            raise ResourceError(
                "the Ray cluster cannot run this config (nothing was processed):\n  - "
                + "\n  - ".join(problems)
                + (f"\n(waited {wait:g} s for the cluster to scale up: runner.wait_for_resources_s)" if wait else "")
            )
        if not told:
            print(
                f"waiting up to {wait:g} s for the cluster to scale up (runner.wait_for_resources_s): "
                + "; ".join(problems),
                file=sys.stderr,
            )
            told = True
        time.sleep(min(5.0, max(0.1, deadline - time.monotonic())))


def build(cfg, input_spec: str, out_dir, log_summary: bool = True, stages: tuple = STAGES) -> dict:
    """Check everything that can be checked before any work (weights and extras, the output, the
    inputs, the cluster's resources), then list inputs, skip finished chunks, run, commit,
    summarise. Returns the summary dict. ``stages``: the pipeline (default
    :data:`~vid2pair.pipeline.graph.STAGES`; tests add their own). SIGINT / SIGTERM while it runs
    raise :class:`Interrupted` (committed chunks stay; a rerun resumes)."""
    from vid2pair.pipeline.io import (
        clip_durations,
        format_summary,
        input_root,
        list_inputs,
        make_tasks,
        require_inputs,
        summarize,
    )
    from vid2pair.pipeline.storage import check_writable

    t0 = time.time()
    check_arrays(stages)  # every array a stage reads has a provider before it
    if cfg.runner.check_weights:
        from vid2pair.pipeline.models import MissingWeightsError, check_build_weights

        problems = check_build_weights(cfg, stages=stages)
        if problems:  # otherwise every pair would end as a *_backend_unavailable reject
            raise MissingWeightsError(
                "model stages cannot run (nothing was processed):\n  - "
                + "\n  - ".join(p.replace("\n", "\n    ") for p in problems)
                + "\n(runner.check_weights=false skips this check, e.g. when only the "
                "workers see the model cache)"
            )
    check_writable(out_dir)
    sources = list_inputs(input_spec, cfg.input.extensions)
    require_inputs(input_spec, sources, cfg.input.extensions)
    if cfg.runner.name == "ray":
        init_ray(cfg)
        check_resources(cfg, stages)
    durations = clip_durations(sources, cfg.input.unit_s)  # long clips become several work units
    tasks, dups = make_tasks(sources, cfg.output.clips_per_shard, input_root(input_spec), durations, cfg.input.unit_s)
    writer = OutputWriter(out_dir, cfg, tasks, dups, stages=stages)
    todo = writer.pending_tasks
    skipped = len(tasks) - len(todo)
    what = "clips" if len(tasks) == len(sources) else "work units"
    if len(tasks) > len(sources) and log_summary:
        n_split = len({t.source for t in tasks if t.split})
        print(
            f"{n_split} long clip(s) split into {sum(t.split for t in tasks)} work units of about "
            f"{cfg.input.unit_s:g} s (input.unit_s)",
            file=sys.stderr,
        )
    if skipped and log_summary:
        print(
            f"resume: {skipped} of {len(tasks)} {what} are in finished shards; processing {len(todo)}", file=sys.stderr
        )
    if todo:
        with _signals_raise() as caught:
            try:
                RUNNERS[cfg.runner.name](cfg, todo, writer, stages)
            except KeyboardInterrupt:
                chunks = {t.chunk for t in tasks}
                done = len(chunks) - len(writer.incomplete_chunks())
                if cfg.runner.name == "ray":
                    _shutdown_private_ray(cfg)
                raise Interrupted(done, len(chunks), caught.get("signum", 2)) from None
            finally:
                writer.close()
    missing = writer.incomplete_chunks()
    if missing:
        raise RuntimeError(f"chunks {missing[:10]} did not complete (a clip's items were lost); rerun to resume")
    summary = summarize(
        out_dir,
        cfg,
        len(sources),
        time.time() - t0,
        cfg.runner.name,
        writer.new_samples,
        tasks=tasks,
        n_duplicates=len(dups),
        model_io=getattr(writer, "model_io", None),
    )
    if log_summary:
        print(format_summary(summary, out_dir), file=sys.stderr)
    return summary
