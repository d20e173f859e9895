"""Depth for the collage's z-order: DPT (MiDaS) disparity, or a weight-free occlusion ordering.

Both give *disparity* (relative inverse depth: larger = nearer), the quantity Magic Fixup
z-buffers when it composites warped segments (it sorts segments by the median of
``1 / disparity`` and keeps, per pixel, the warped segment with the largest disparity).

``dpt``
    ``transformers`` ``DPTForDepthEstimation`` + ``DPTImageProcessor`` loaded from a local
    directory (``dpt_weights`` or the model cache entry ``dpt_hybrid_midas``, see
    ``pipeline.models``). ``predicted_depth`` is MiDaS's relative inverse depth; it is resized
    bicubically to the image and clamped at 0. Not normalised: only its order within one image
    is used. ``model=`` / ``processor=`` inject built objects (tests use a tiny random model).
``occlusion`` (weight-free, the default)
    A z-order, not a depth map, decided from the pair itself:

    1. Evidence: wherever two fitted, warped segments land on the same target pixels, the one
       whose warped colours match the TARGET there is in front (it is the one the target
       shows). Per overlapping pair, the median over the overlap of
       ``err_back - err_front`` must exceed ``min_contrast`` grey levels on at least
       ``min_overlap`` pixels to count; each such pair gives one ordering constraint.
    2. Prior, where the pair gives no evidence (no overlap, textureless overlap): on a static
       camera the background does not move, so segments that move are in front of segments
       that do not (movers are objects passing in front of the scene); among segments of
       the same class, the lower the segment's bottom edge in the frame, the nearer (the
       ground-plane prior: objects standing on the ground at larger image-y are closer to a
       camera above the ground).
    3. The constraints are resolved back to front by a topological sort that picks, among the
       segments whose "behind" constraints are satisfied, the one the prior puts farthest;
       cycles (contradictory evidence) drop their weakest constraint.

    Segment ``k`` of ``n`` in that order (0 = farthest) gets disparity ``(k + 1) / n``.
    On the synthetic clips (whose z-order is known: later objects are on top) this ordering
    is measured in ``tests/test_collage.py``. Only the relative order of segments whose warped
    footprints overlap changes the collage, and exactly those pairs have evidence.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.stages.segment import segment_pixels

__all__ = ["DPTDepth", "occlusion_order", "order_to_disparity", "make_depth", "DPT_EXTRA_MESSAGE", "DEPTHS"]

DPT_EXTRA_MESSAGE = "transformers is not installed (needed for depth=dpt): pip install 'vid2pair[collage]'"
DEPTHS = ("occlusion", "dpt")


class DPTDepth:
    """MiDaS-style DPT: image (H, W, 3) uint8 RGB -> disparity (H, W) float32 (larger = nearer)."""

    name = "dpt"

    def __init__(
        self,
        weights: Optional[str] = None,
        *,
        device: str = "auto",
        model: Any = None,
        processor: Any = None,
        entry: str = "dpt_hybrid_midas",
    ) -> None:
        try:
            import transformers
            from transformers import DPTForDepthEstimation, DPTImageProcessor
        except ImportError:
            raise ImportError(DPT_EXTRA_MESSAGE) from None
        self.device = resolve_device(device)
        if model is None:
            from vid2pair.core.weights import resolve_weights

            # raises MissingWeightsError naming `vid2pair models fetch <entry>`
            path = Path(resolve_weights(entry, explicit=weights, config_key="collage.dpt_weights"))
            model = DPTForDepthEstimation.from_pretrained(str(path))
            if processor is None:
                processor = DPTImageProcessor.from_pretrained(str(path))
            tag = path.name
        else:
            tag = "injected"
        self.model = model.to(self.device).eval()
        self.processor = processor if processor is not None else DPTImageProcessor()
        self.version = f"transformers-{transformers.__version__}/dpt-{tag}"

    def __call__(self, img: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        img = np.asarray(img)
        if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
            raise ValueError(f"depth expects an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
        inputs = self.processor(images=img, return_tensors="pt")
        pix = inputs["pixel_values"].to(self.device)
        with torch.inference_mode():
            pred = self.model(pixel_values=pix).predicted_depth  # (1, h, w) relative inverse depth
        pred = F.interpolate(pred[:, None].float(), size=img.shape[:2], mode="bicubic", align_corners=False)
        return np.clip(pred[0, 0].cpu().numpy(), 0.0, None).astype(np.float32)


def _bottom_prior(pixels: list, h: int, w: int) -> np.ndarray:
    """Per segment: 95th percentile of its rows / height (larger = lower in the frame = nearer)."""
    return np.array([np.percentile(p // w, 95) / max(h - 1, 1) if len(p) else 0.0 for p in pixels])


def occlusion_order(
    src: np.ndarray,
    tgt: np.ndarray,
    labels: np.ndarray,
    transforms: Sequence[Optional[np.ndarray]],
    moving: Sequence[bool],
    *,
    min_overlap: int = 20,
    min_contrast: float = 3.0,
    pixels: Optional[list] = None,
) -> tuple[list[int], dict]:
    """Back-to-front order of the segments ``0..n-1`` of ``labels`` (see the module docstring).

    ``transforms[k]`` is the 2x3 src->tgt map of segment ``k`` (``None``: not warped, takes no part
    in the evidence); ``moving[k]`` its static/moving class for the prior. ``pixels`` may pass the
    flat pixel indices of each segment (else computed from ``labels``). Returns ``(order, info)``:
    ``order`` lists segment ids from farthest to nearest; ``info`` counts the constraints used.
    """
    n = len(transforms)
    h, w = labels.shape
    src_f, tgt_f = np.asarray(src, np.float32), np.asarray(tgt, np.float32)
    if pixels is None:
        pixels = segment_pixels(labels, n)
    prior = _bottom_prior(pixels, h, w) + np.asarray(moving, float)
    # warped masks and per-pixel photometric error, in ROIs
    rois: list = [None] * n
    cover = np.zeros((h, w), np.int32)
    for k in range(n):
        A = transforms[k]
        if A is None:
            continue
        roi = _warp_mask_roi(pixels[k], A, (h, w))
        if roi is None:
            continue
        y0, x0, m = roi
        cover[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]] += m
        rois[k] = roi
    edges: dict[tuple[int, int], float] = {}  # (behind, front) -> weight
    if (cover >= 2).any():
        over = cover >= 2
        cand = []
        for k in range(n):
            if rois[k] is not None:
                y0, x0, m = rois[k]
                if over[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]][m].any():
                    cand.append(k)
        err = {}
        for k in cand:
            y0, x0, m = rois[k]
            A = np.asarray(transforms[k], np.float64).copy()
            A[:, 2] -= (x0, y0)
            warped = cv2.warpAffine(
                src_f, A, (m.shape[1], m.shape[0]), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
            )
            e = np.abs(warped - tgt_f[y0 : y0 + m.shape[0], x0 : x0 + m.shape[1]]).mean(-1)
            err[k] = e
        for a_i, a in enumerate(cand):
            ya, xa, ma = rois[a]
            for b in cand[a_i + 1 :]:
                yb, xb, mb = rois[b]
                y0, x0 = max(ya, yb), max(xa, xb)
                y1 = min(ya + ma.shape[0], yb + mb.shape[0])
                x1 = min(xa + ma.shape[1], xb + mb.shape[1])
                if y1 <= y0 or x1 <= x0:
                    continue
                sa = (slice(y0 - ya, y1 - ya), slice(x0 - xa, x1 - xa))
                sb = (slice(y0 - yb, y1 - yb), slice(x0 - xb, x1 - xb))
                ov = ma[sa] & mb[sb]
                cnt = int(ov.sum())
                if cnt < min_overlap:
                    continue
                d = float(np.median(err[b][sb][ov] - err[a][sa][ov]))  # > 0: a matches better -> a in front
                if abs(d) < min_contrast:
                    continue
                key = (b, a) if d > 0 else (a, b)
                edges[key] = edges.get(key, 0.0) + cnt * abs(d)
    order = _toposort(n, edges, prior)
    return order, {"constraints": len(edges), "overlap_px": int((cover >= 2).sum())}


def _toposort(n: int, edges: dict, prior: np.ndarray) -> list[int]:
    """Back to front: repeatedly take the farthest (lowest prior) segment with nothing left that
    must be behind it; on a cycle drop the weakest remaining constraint."""
    edges = dict(edges)
    placed: list[int] = []
    left = set(range(n))
    while left:
        blocked = {f for (b, f) in edges if b in left and f in left}
        free = [k for k in left if k not in blocked]
        if not free:
            live = {e: wgt for e, wgt in edges.items() if e[0] in left and e[1] in left}
            edges.pop(min(live, key=lambda e: (live[e], e)))
            continue
        k = min(free, key=lambda i: (prior[i], i))
        placed.append(k)
        left.remove(k)
    return placed


def order_to_disparity(order: Sequence[int], n: int) -> np.ndarray:
    """Per-segment disparity ``(rank + 1) / n`` for a back-to-front order (larger = nearer)."""
    disp = np.zeros(n, np.float32)
    for r, k in enumerate(order):
        disp[k] = (r + 1) / max(n, 1)
    return disp


def _warp_mask_roi(pix: np.ndarray, A: np.ndarray, shape: tuple[int, int]):
    """Warp a segment (flat pixel indices) by the 2x3 ``A`` into the frame; returns
    ``(y0, x0, bool ROI)`` covering the warped mask (None when it leaves the frame)."""
    h, w = shape
    if len(pix) == 0:
        return None
    ys, xs = pix // w, pix % w
    sx0, sy0, sx1, sy1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    corners = np.array([[sx0 - 1, sy0 - 1], [sx1, sy0 - 1], [sx0 - 1, sy1], [sx1, sy1]], np.float64)
    A = np.asarray(A, np.float64)
    q = corners @ A[:, :2].T + A[:, 2]
    x0, y0 = max(int(np.floor(q[:, 0].min())) - 1, 0), max(int(np.floor(q[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(q[:, 0].max())) + 2, w), min(int(np.ceil(q[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    crop = np.zeros((sy1 - sy0, sx1 - sx0), np.float32)
    crop[ys - sy0, xs - sx0] = 1.0
    B = A.copy()
    B[:, 2] = A[:, :2] @ np.array([sx0, sy0], np.float64) + A[:, 2] - (x0, y0)
    m = cv2.warpAffine(
        crop, B, (x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0
    )
    return y0, x0, m > 0.5


def make_depth(cfg: Any, model: Any = None, processor: Any = None):
    """``None`` for the weight-free ``occlusion`` ordering, else a :class:`DPTDepth` (``cfg``: a CollageConfig)."""
    if cfg.depth == "occlusion":
        return None
    if cfg.depth == "dpt":
        return DPTDepth(cfg.dpt_weights, device=cfg.device, model=model, processor=processor, entry=cfg.dpt_model)
    raise ValueError(f"unknown depth backend {cfg.depth!r}; choose one of {', '.join(DEPTHS)}")
