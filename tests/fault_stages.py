"""Stages that fail on purpose, for the isolation tests (the production code has no fault hooks).

They are passed to ``build(..., stages=...)``; the isolation child imports this module by name
(pytest puts tests/ on sys.path, and a spawned child inherits it).
"""

from __future__ import annotations

import os
import time

from vid2pair.core.stage import pair_reject
from vid2pair.pipeline.graph import STAGES
from vid2pair.stages.clip import ClipStage
from vid2pair.stages.flow import FlowStage
from vid2pair.stages.motion import MotionStage


class AbortOnC1(ClipStage):
    """Aborts the process while decoding c1.mp4 (a native crash in the decoder)."""

    def _run(self, task, path):
        self._report("decode")
        if "c1.mp4" in task.source:
            os.abort()
        return super()._run(task, path)


class HangOnC0(ClipStage):
    """Never returns on c0.mp4 (a decoder that hangs)."""

    def _run(self, task, path):
        if "c0.mp4" in task.source:
            self._report("shots")
            while True:
                time.sleep(3600)
        return super()._run(task, path)


class FlowAbortOnC2(FlowStage):
    """Aborts the process in the flow stage, after decoding, on c2.mp4's pairs."""

    def process(self, items):
        if any("c2.mp4" in it.source for it in items):
            os.abort()
        return super().process(items)


def with_stage(replace: type, by: type) -> tuple:
    """The pipeline with one stage class replaced."""
    return tuple(by if S is replace else S for S in STAGES)


class RejectLongGaps(MotionStage):
    """Says ``motion_too_large`` for every pair more than 1.6 s apart (a stand-in for motion the flow
    cannot follow over a long gap), for the retry-at-a-shorter-gap tests."""

    def one(self, it):
        if it.meta["dt"] > 1.6:
            return pair_reject(it, self.name, "motion_too_large", f"dt {it.meta['dt']:.2f} s > 1.6 s")
        return super().one(it)
