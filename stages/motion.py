"""motion filter: flow-magnitude statistics and the preset's min/max rules.

Pixel thresholds in the config are for a frame whose short side is
``motion.reference_short_side``; they scale linearly with the stored frame's short side.
"""
from __future__ import annotations

from typing import Optional

import numpy as np


def flow_stats(flow: np.ndarray, moving_px: float, large_px: float) -> dict:
    mag = np.linalg.norm(flow.astype(np.float32), axis=-1).ravel()
    p50, p90, p95, p99 = np.percentile(mag, [50, 90, 95, 99])
    return {"mean": float(mag.mean()), "p50": float(p50), "p90": float(p90), "p95": float(p95),
            "p99": float(p99), "max": float(mag.max()),
            "moving_frac": float((mag > moving_px).mean()), "large_frac": float((mag >= large_px).mean()),
            "moving_px": float(moving_px), "large_px": float(large_px)}


def scale_for(short_side: int, cfg) -> float:
    return short_side / float(cfg.reference_short_side)


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
        return "motion_too_small", (f"{stats['moving_frac']:.4f} of pixels move > {stats['moving_px']:.2f} px "
                                    f"(< {cfg.min_moving_frac})")
    if cfg.max_p99 is not None and stats["p99"] > cfg.max_p99 * s:
        return "motion_too_large", f"p99 {stats['p99']:.1f} px > {cfg.max_p99 * s:.1f} px"
    if cfg.max_large_frac is not None and stats["large_frac"] >= cfg.max_large_frac:
        return "motion_too_large", (f"{stats['large_frac']:.3f} of pixels move >= {stats['large_px']:.1f} px "
                                    f"(>= {cfg.max_large_frac})")
    return None
