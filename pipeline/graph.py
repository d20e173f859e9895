"""The whole pipeline on one screen: the stages, in order.

Each stage module declares what it owns, reads, writes, needs and which resources it uses
(:mod:`vid2pair.core.stage`); :mod:`vid2pair.pipeline.plan` derives the rest from this list (the
config tree, the Ray grouping, the pre-flight check, the encoder's members, the QC signals, the
trainer's member names). Adding a stage means one module and one line here.

Every clip ends with a :class:`~vid2pair.core.items.ClipDone` marker so the writer knows when a
clip, and so a shard, is complete; every candidate pair ends as a sample or a reject.
"""

from __future__ import annotations

from vid2pair.stages.clip import ClipStage
from vid2pair.stages.coarse import CoarseStage
from vid2pair.stages.collage import CollageStage
from vid2pair.stages.encode import EncodeStage
from vid2pair.stages.flow import FlowStage
from vid2pair.stages.motion import MotionStage
from vid2pair.stages.quality import QualityStage
from vid2pair.stages.sketch import SketchStage
from vid2pair.stages.track import TrackStage

STAGES = (
    ClipStage,  # per clip: probe -> shots -> static camera -> pairs -> decode   -> PairItem | Reject
    FlowStage,  # optical flow src -> tgt (direct, chained, or the flow_advance target search)
    MotionStage,  # flow statistics; too small / too large motion
    TrackStage,  # target -> source tracks: drag points, matching supervision
    SketchStage,  # strokes along the motion boundaries (target layout)
    CoarseStage,  # softmax-splat coarse edit + hole mask
    CollageStage,  # piecewise-similarity collage + hole mask, region drags
    QualityStage,  # every signal judged against the pair's own images; failing ones dropped / rejected
    EncodeStage,  # arrays and meta -> tar members
)
