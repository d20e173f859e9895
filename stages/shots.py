"""shots: split a clip at cuts with PySceneDetect's detectors, fed with our own (small) frames.

Pure core: :func:`detect_cuts` takes an iterable of RGB frames and returns cut frame indices;
:func:`shots_from_cuts` turns cuts into ``[start, end)`` ranges, trimmed and length-filtered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Literal

import numpy as np

from vid2pair.core.spec import knob


@dataclass
class ShotsConfig:
    """Cut detection (PySceneDetect) on small frames decoded sequentially."""

    detector: Literal["content", "adaptive", "none"] = knob("content", "scenedetect detector; none: one shot per clip")
    threshold: float = knob(27.0, "ContentDetector threshold", gt=0)
    min_shot_s: float = knob(1.0, "shorter shots are rejected (stage shots)", unit="s", gt=0)
    analysis_width: int = knob(128, "frames are decoded this wide for cut detection", unit="px", ge=16)
    trim_s: float = knob(0.1, "dropped at both ends of each shot (fades, cut blur)", unit="s", ge=0)


def detect_cuts(
    frames: Iterable[tuple[int, np.ndarray]],
    fps: float,
    detector: str = "content",
    threshold: float = 27.0,
    min_scene_len: int = 15,
) -> list[int]:
    """``frames``: (index, RGB uint8 frame) in increasing order. Returns frame indices that start a new shot."""
    if detector == "none":
        return []
    from scenedetect import AdaptiveDetector, ContentDetector
    from scenedetect.common import FrameTimecode

    if detector == "adaptive":
        det = AdaptiveDetector(min_scene_len=min_scene_len)
    else:
        det = ContentDetector(threshold=threshold, min_scene_len=min_scene_len)
    cuts: list = []
    last = 0
    for i, f in frames:
        cuts += det.process_frame(FrameTimecode(int(i), fps), np.ascontiguousarray(f[..., ::-1]))
        last = i
    cuts += det.post_process(FrameTimecode(int(last) + 1, fps))
    return sorted({int(c.frame_num) for c in cuts})


def shots_from_cuts(
    cuts: list[int], n_frames: int, fps: float, min_shot_s: float, trim_s: float = 0.0, start: int = 0
) -> tuple[list[tuple[int, int]], list[tuple[int, int, str]]]:
    """Return (kept shots, rejected shots with a detail string) of the frames ``[start, n_frames)``
    (a work unit's span of a long clip starts later than 0). Ranges are ``[start, end)`` after trimming."""
    bounds = [start] + [c for c in cuts if start < c < n_frames] + [n_frames]
    trim = int(round(trim_s * fps))
    kept, rejected = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        s, e = (a + trim, b - trim) if len(bounds) > 2 else (a, b)  # a single shot: no cut blur to trim
        if e - s < max(2, int(round(min_shot_s * fps))):
            rejected.append((a, b, f"{(b - a) / fps:.2f} s < {min_shot_s:.2f} s"))
        else:
            kept.append((s, e))
    return kept, rejected
