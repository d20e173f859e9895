"""Flow arithmetic: warping by a flow, composing and inverting flows, the hops of a chain, filtering.

A flow is ``float32`` ``(H, W, 2)`` (or batched ``(B, H, W, 2)``) with ``flow[y, x] = (dx, dy)``:
pixel ``(x, y)`` of the first image moves to ``(x + dx, y + dy)`` in the second; integer
coordinates are pixel centres (OpenCV convention).
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def warp_image(img: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Backward-warp ``img`` (the SECOND image) by ``flow``: ``out[y, x] = img(x + dx, y + dy)``.

    Single ``(H, W, C)`` / ``(H, W, 2)`` or batched. Bilinear; the output has ``img``'s dtype.
    """
    img, flow = np.asarray(img), np.asarray(flow, np.float32)
    if flow.ndim == 4:
        return np.stack([warp_image(i, f, border) for i, f in zip(img, flow)])
    xs, ys = _pixel_grid(*flow.shape[:2])
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border)


def _compose_single(f01: np.ndarray, f12: np.ndarray) -> np.ndarray:
    h, w = f01.shape[:2]
    if f12.shape != f01.shape:
        raise ValueError(f"compose_flows: shapes differ {f01.shape} vs {f12.shape}")
    xs, ys = _pixel_grid(h, w)
    sampled = cv2.remap(f12, xs + f01[..., 0], ys + f01[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return f01 + sampled


def compose_flows(f01: np.ndarray, f12: np.ndarray) -> np.ndarray:
    """Compose two flows: ``F_02(x) = F_01(x) + F_12(x + F_01(x))``.

    ``F_12`` is sampled bilinearly (``cv2.remap``; OpenCV quantises the sub-pixel sampling
    position to 1/32 px, so the result is exact for piecewise-constant flows and within
    ``|grad F_12| / 32`` otherwise). Points that land outside the frame take the nearest
    border value of ``F_12``. Single ``(H, W, 2)`` or batched ``(B, H, W, 2)``; float32 out.
    """
    a, b = np.asarray(f01, np.float32), np.asarray(f12, np.float32)
    if a.ndim == 3:
        return _compose_single(a, b)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"compose_flows expects (H, W, 2) or (B, H, W, 2) pairs, got {a.shape} / {b.shape}")
    return np.stack([_compose_single(x, y) for x, y in zip(a, b)])


def chain_indices(n_frames: int, max_steps: Optional[int] = None) -> np.ndarray:
    """Frame indices used for chaining: all of them, or at most ``max_steps`` hops (first and last kept)."""
    if n_frames < 2:
        raise ValueError("chaining needs at least two frames")
    if max_steps is None or n_frames - 1 <= max_steps:
        return np.arange(n_frames)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return np.unique(np.rint(np.linspace(0, n_frames - 1, max_steps + 1)).astype(int))


def _accumulate(hops: np.ndarray) -> np.ndarray:
    total = hops[0]
    for hop in hops[1:]:
        total = _compose_single(total, hop)
    return np.ascontiguousarray(total, dtype=np.float32)


def invert_flow(f: np.ndarray, iters: int = 2) -> np.ndarray:
    """Approximate inverse ``b`` of a flow ``f`` (``b(y) = -f(y + b(y))``, fixed-point iterations)."""
    h, w = f.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    b = -f
    for _ in range(iters):
        b = -cv2.remap(f, xs + b[..., 0], ys + b[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return b


def median_filter_flow(flow: np.ndarray, size: Optional[int]) -> np.ndarray:
    """Each flow channel median-filtered over ``size`` x ``size`` pixels (None: unchanged)."""
    if not size:
        return flow
    from scipy.ndimage import median_filter

    return np.stack([median_filter(flow[..., k], size=int(size), mode="nearest") for k in range(2)], axis=-1).astype(
        np.float32
    )


def motion_stat(flow: np.ndarray, min_px: float) -> float:
    """p90 magnitude of the pixels moving more than ``min_px`` (0 when fewer than 8 move)."""
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    moving = mag[mag > min_px]
    if moving.size < 8:
        return 0.0
    return float(np.percentile(moving, 90))
