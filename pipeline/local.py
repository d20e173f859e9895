"""The local runner: every clip through every stage in this process (the clip stage and the stages
fused with it in an isolation child), one clip at a time, with a progress bar."""

from __future__ import annotations

import os
import sys

from tqdm import tqdm

from vid2pair.core.items import ClipTask
from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.io import OutputWriter
from vid2pair.pipeline.plan import (
    batch_size_of,
    build_pair_stages,
    fused_prefix,
    pair_classes,
)
from vid2pair.pipeline.unit import ClipUnit, run_items


def _bar(tasks: list[ClipTask], enabled: bool):
    """The progress bar: clips, or work units when a long clip was split."""
    what = "units" if any(t.split for t in tasks) else "clips"
    return tqdm(total=len(tasks), desc=what, unit=what[:-1], disable=not enabled, file=sys.stderr, dynamic_ncols=True)


def run_local(cfg, tasks: list[ClipTask], writer: OutputWriter, stages: tuple = STAGES) -> None:
    set_threads(cfg.runner.threads_per_worker)
    classes = pair_classes(cfg, stages)
    fused = fused_prefix(cfg, classes)
    unit = ClipUnit(cfg, fused, stages[0], after=classes[len(fused) :])
    rest = build_pair_stages(cfg, classes)[len(fused) :]
    batch = batch_size_of(cfg, classes[len(fused) :])
    try:
        with _bar(tasks, cfg.runner.progress) as bar:
            for task in tasks:
                for it in run_items(unit, rest, task, batch):
                    writer.add(it)
                bar.update(1)
                bar.set_postfix(samples=writer.new_samples, shards=len(writer.written_chunks))
    finally:
        unit.close()
        for st in rest:
            st.close()


def set_threads(n: int) -> None:
    """CPU threads of OpenCV and torch in this process (workers parallelise across clips instead)."""
    import cv2

    cv2.setNumThreads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
