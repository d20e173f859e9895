"""probe: read container metadata (duration, fps, frame count, size, codec) without decoding.

Pure function: a path in, a :class:`ProbeResult` out. Problems are returned as a
``(reason, detail)`` rejection, never raised, so one bad file cannot stop a job.
Reasons: ``not_found``, ``unreadable``, ``no_video_stream``, ``too_small``, ``too_short``.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from typing import Optional

from vid2pair.core.spec import knob


@dataclass
class ProbeConfig:
    """Container checks before any decoding."""

    min_width: int = knob(64, "narrower videos are rejected (too_small)", unit="px", ge=1)
    min_height: int = knob(64, "lower videos are rejected (too_small)", unit="px", ge=1)
    min_duration_s: Optional[float] = knob(
        None,
        "shorter videos are rejected (too_short); null: derived from "
        "the pair policy's smallest gap and shots.min_shot_s",
        unit="s",
        gt=0,
    )


@dataclass
class ProbeResult:
    width: int
    height: int
    fps: float
    n_frames: int  # from the container header; not trusted until decoded
    duration_s: float
    codec: str
    container: str

    def to_dict(self) -> dict:
        return asdict(self)


def probe(path: str) -> tuple[Optional[ProbeResult], Optional[tuple[str, str]]]:
    """Return ``(info, None)`` or ``(None, (reason, detail))``."""
    if not os.path.exists(path):
        return None, ("not_found", f"no such file: {path}")
    if not os.access(path, os.R_OK):
        return None, ("unreadable", "permission denied")
    if os.path.getsize(path) == 0:
        return None, ("unreadable", "empty file (0 bytes)")
    import av

    from vid2pair.stages.decode import quiet_ffmpeg

    quiet_ffmpeg()  # FFmpeg's complaints about a broken file are counted, never printed
    try:
        with av.open(path, metadata_errors="ignore") as c:
            vs = [s for s in c.streams if s.type == "video"]
            if not vs:
                kinds = sorted({s.type for s in c.streams}) or ["none"]
                return None, ("no_video_stream", f"streams: {', '.join(kinds)}")
            s = vs[0]
            ctx = s.codec_context
            width, height = int(ctx.width or 0), int(ctx.height or 0)
            rate = s.average_rate or s.guessed_rate or s.base_rate
            fps = float(rate) if rate else 0.0
            if s.duration is not None and s.time_base is not None:
                duration = float(s.duration * s.time_base)
            elif c.duration is not None:
                duration = c.duration / 1_000_000.0
            else:
                duration = 0.0
            n_frames = int(s.frames or 0)
            if n_frames <= 0 and fps > 0:
                n_frames = int(round(duration * fps))
            if duration <= 0 and fps > 0:
                duration = n_frames / fps
            info = ProbeResult(
                width=width,
                height=height,
                fps=fps,
                n_frames=n_frames,
                duration_s=duration,
                codec=str(ctx.name),
                container=str(c.format.name),
            )
    except Exception as e:  # PyAV raises many error types for broken input
        return None, ("unreadable", f"{type(e).__name__}: {e}"[:300])
    if width <= 0 or height <= 0 or fps <= 0:
        return None, ("unreadable", f"bad stream header: {width}x{height} @ {fps} fps")
    return info, None


def check_limits(info: ProbeResult, min_w: int, min_h: int, min_duration_s: float) -> Optional[tuple[str, str]]:
    if info.width < min_w or info.height < min_h:
        return "too_small", f"{info.width}x{info.height} < {min_w}x{min_h}"
    if info.duration_s < min_duration_s:
        return "too_short", f"{info.duration_s:.2f} s < {min_duration_s:.2f} s needed by the pair policy"
    return None
