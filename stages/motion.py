"""motion filter: flow-magnitude statistics and the preset's min/max rules.

Pixel thresholds in the config are for a frame whose short side is
``motion.reference_short_side``; they scale linearly with the stored frame's short side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vid2pair.core.items import Item, PairItem
from vid2pair.core.spec import frame_scale, knob, need
from vid2pair.core.stage import PairStage, pair_reject


@dataclass
class MotionConfig:
    """Reject pairs whose motion is too small or too large (pixel thresholds at a reference size)."""

    reference_short_side: int = knob(
        512, "the px@512 thresholds below are for this short side; scaled to the stored frame", unit="px", gt=0
    )
    min_p50: Optional[float] = knob(None, "too small: median flow magnitude below this", unit="px@512", ge=0)
    min_p90: Optional[float] = knob(1.0, "too small: p90 of the flow magnitude below this", unit="px@512", ge=0)
    min_moving_frac: Optional[float] = knob(
        0.002, "too small: fewer pixels than this move more than moving_px", unit="frac", ge=0, le=1
    )
    moving_px: float = knob(1.0, "a pixel moves above this flow magnitude", unit="px@512", ge=0)
    max_p99: Optional[float] = knob(None, "too large: p99 of the flow magnitude above this", unit="px@512", ge=0)
    large_px: float = knob(350.0, "large-motion threshold", unit="px@512", gt=0)
    max_large_frac: Optional[float] = knob(
        0.1, "too large: this fraction or more moves >= large_px", unit="frac", ge=0, le=1
    )

    def check(self, prefix: str = "motion") -> None:
        if self.min_p90 is not None and self.max_p99 is not None:
            need(self.max_p99 > self.min_p90, f"{prefix}.max_p99", f"must be > {prefix}.min_p90")


def flow_stats(flow: np.ndarray, moving_px: float, large_px: float) -> dict:
    mag = np.linalg.norm(flow.astype(np.float32), axis=-1).ravel()
    p50, p90, p95, p99 = np.percentile(mag, [50, 90, 95, 99])
    return {
        "mean": float(mag.mean()),
        "p50": float(p50),
        "p90": float(p90),
        "p95": float(p95),
        "p99": float(p99),
        "max": float(mag.max()),
        "moving_frac": float((mag > moving_px).mean()),
        "large_frac": float((mag >= large_px).mean()),
        "moving_px": float(moving_px),
        "large_px": float(large_px),
    }


def scale_for(short_side: int, cfg) -> float:
    """Stored px per knob px (the px@512 knobs, at ``motion.reference_short_side``)."""
    return frame_scale((short_side, short_side), "px@512", cfg.reference_short_side)


def motion_stats(flow: np.ndarray, cfg) -> dict:
    s = scale_for(min(flow.shape[:2]), cfg)
    return flow_stats(flow, cfg.moving_px * s, cfg.large_px * s)


def motion_verdict(stats: dict, short_side: int, cfg) -> Optional[tuple[str, str]]:
    """None if the pair passes, else (reason, detail). Reasons: motion_too_small, motion_too_large."""
    s = scale_for(short_side, cfg)
    if cfg.min_p50 is not None and stats["p50"] < cfg.min_p50 * s:
        return "motion_too_small", f"p50 {stats['p50']:.2f} px < {cfg.min_p50 * s:.2f} px"
    if cfg.min_p90 is not None and stats["p90"] < cfg.min_p90 * s:
        return "motion_too_small", f"p90 {stats['p90']:.2f} px < {cfg.min_p90 * s:.2f} px"
    if cfg.min_moving_frac is not None and stats["moving_frac"] < cfg.min_moving_frac:
        return "motion_too_small", (
            f"{stats['moving_frac']:.4f} of pixels move > {stats['moving_px']:.2f} px (< {cfg.min_moving_frac})"
        )
    if cfg.max_p99 is not None and stats["p99"] > cfg.max_p99 * s:
        return "motion_too_large", f"p99 {stats['p99']:.1f} px > {cfg.max_p99 * s:.1f} px"
    if cfg.max_large_frac is not None and stats["large_frac"] >= cfg.max_large_frac:
        return "motion_too_large", (
            f"{stats['large_frac']:.3f} of pixels move >= {stats['large_px']:.1f} px (>= {cfg.max_large_frac})"
        )
    return None


class MotionStage(PairStage):
    """Flow-magnitude statistics (into ``meta["flow"]["stats"]`` and the index) and the min/max rules."""

    name = "motion"
    sections = {"motion": MotionConfig}
    reads = ("flow",)

    @classmethod
    def index_columns(cls, meta: dict) -> dict:
        return {f"flow_{k}": v for k, v in ((meta.get("flow") or {}).get("stats") or {}).items()}

    index_schema = {
        f"flow_{k}": "float64"
        for k in ("mean", "p50", "p90", "p95", "p99", "max", "moving_frac", "large_frac", "moving_px", "large_px")
    }

    def one(self, it: PairItem) -> Item:
        flow = it.arrays["flow"]
        bad_px = int((~np.isfinite(flow)).any(axis=-1).sum())
        if bad_px:  # NaN / inf compare False against every threshold: catch them here, by name
            return pair_reject(
                it, "motion", "invalid_flow", f"{bad_px} of {flow.shape[0] * flow.shape[1]} pixels have non-finite flow"
            )
        st = motion_stats(flow, self.cfg.motion)
        it.meta["flow"]["stats"] = {k: round(v, 5) for k, v in st.items()}
        bad = motion_verdict(st, min(flow.shape[:2]), self.cfg.motion)
        if bad:
            return pair_reject(it, "motion", *bad)
        return it
