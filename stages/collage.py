"""Piecewise-similarity collage (Magic Fixup's coarse edit) and the stage that adds it to a pair.

What Magic Fixup's data pipeline does (read from its public code, re-implemented here): segment
the source frame (SAM, masks with area > 300), fit one similarity transform per segment to the
optical flow (``cv2.estimateAffinePartial2D`` with RANSAC on 50 sampled pixels, ``p -> p +
flow(p)``), warp each segment's colours, mask and disparity with ``cv2.warpAffine``, composite
them with a z-buffer on the warped disparity (MiDaS), and fill the pixels that belong to no
segment by softmax-splatting them along the flow; what nothing covers is the mask the model
must fill.

Here
----
1. :mod:`stages.segment` gives a label map of the SOURCE (``-1``: no segment).
2. :func:`fit_segments`: per segment with more than ``min_area`` pixels, ``fit_samples`` pixels
   are drawn without replacement (seeded per pair) and a similarity is fitted with RANSAC
   (``ransac_thresh`` px). A fit is kept when it exists, is finite, its scale is in
   ``[1/4, 4]`` and at least ``min_inlier_frac`` of the samples are inliers; otherwise the
   segment *falls back to flow splatting* (``status`` says why). ``residual_px`` is the median,
   over (up to 4096 of) the segment's pixels, of ``|A p - (p + flow(p))|``.
3. Depth (:mod:`stages.depth`): DPT disparity, whose per-segment median orders the segments and
   whose warped per-pixel values feed the z-buffer (Magic Fixup), or the weight-free
   ``occlusion`` ordering (a constant disparity per segment, so the z-buffer reduces to the
   painter's order).
4. :func:`composite`: back to front (ascending median disparity), each kept segment's warped
   pixels (warped mask > 0.5) are written where their warped disparity is >= the z-buffer, so
   nearer segments win. The remaining source pixels (no segment, too small, failed fit) are
   softmax-splatted (``stages.splat``, ``soft`` mode, Magic Fixup's metric) and fill the
   pixels no segment covers wherever their splatted density is > ``hole_thresh`` (0.5, the
   coarse edit's rule). The rest is the hole mask (255), and black in the collage.

Outputs of :class:`CollageStage` (per pair): ``arrays["collage"]`` (H, W, 3) uint8,
``arrays["collage_mask"]`` (H, W) uint8 255 = hole, ``meta["collage"]`` (segments, transforms,
depth, residuals, hole fraction; no timings, so reruns write identical samples), and the region
drags of :mod:`stages.region_drag`
(``meta["region_drag"]``, ``arrays["region_masks"]``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Literal, Optional

import cv2
import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.core.seeding import rng_for
from vid2pair.core.spec import knob, need
from vid2pair.core.stage import Member, Need, PairStage, Resources, Score, Signal, pair_reject
from vid2pair.ops.similarity import (  # noqa: F401  (re-exported)
    _similarity_params,
    fit_similarity,
    residual_px,
    segment_median_flow,
)
from vid2pair.stages.evidence import edit_scores, judge_warped_edit, residual, warped_edit_signal
from vid2pair.stages.region_drag import (
    REGION_METRICS,
    REGION_SCORES,
    RegionDragConfig,
    draw_region_drag,
    judge_region_drag,
    region_drags,
)
from vid2pair.stages.segment import segment_pixels
from vid2pair.stages.splat import check_pair_arrays

__all__ = [
    "CollageConfig",
    "SegmentFit",
    "fit_segments",
    "composite",
    "make_collage",
    "CollageStage",
    "segment_median_flow",
]


@dataclass
class CollageConfig:
    """The collage: per-segment similarity transforms composited back to front, with its hole mask."""

    enabled: bool = knob(True, "collage.png + collage_mask.png (+ region drags)")
    segmenter: Literal["felzenszwalb", "slic", "sam"] = knob(
        "felzenszwalb", "felzenszwalb | slic (weight-free) | sam (segment-anything, weights)"
    )
    sam_model_type: Literal["vit_b", "vit_l", "vit_h"] = knob("vit_b", "SAM backbone")
    sam_checkpoint: Optional[str] = knob(None, "explicit SAM .pth; default: the model cache (sam_<type>)")
    points_per_side: int = knob(32, "SAM automatic mask generator grid", ge=1)
    min_area: int = knob(300, "segments with <= this many pixels are flow-splatted (Magic Fixup: area > 300)", ge=0)
    fz_scale: float = knob(300.0, "Felzenszwalb scale (rescaled with the frame)", unit="px@240", gt=0)
    fz_sigma: float = knob(0.8, "Felzenszwalb pre-smoothing (rescaled with the frame)", unit="px@240", ge=0)
    fz_min_size: int = knob(50, "Felzenszwalb minimum component (rescaled with the frame)", unit="px@240", ge=1)
    slic_segments: int = knob(150, "SLIC: approximate number of superpixels", ge=1)
    slic_compactness: float = knob(10.0, "SLIC: colour vs space trade-off", gt=0)
    segment_short_side: Optional[int] = knob(
        288, "weight-free segmenters run at <= this short side; null: full size", unit="px", ge=32
    )
    flow_weight: float = knob(
        1.0, "weight of a 1-px flow difference (at 240 px) vs a full-range colour difference", ge=0
    )
    depth: Literal["occlusion", "dpt"] = knob("occlusion", "occlusion (weight-free order) | dpt (MiDaS, weights)")
    dpt_model: Literal["dpt_hybrid_midas", "dpt_large"] = knob(
        "dpt_hybrid_midas", "which MiDaS DPT (registry entry; Magic Fixup: dpt_large)"
    )
    dpt_weights: Optional[str] = knob(None, "local DPT directory; default: the model cache (collage.dpt_model)")
    fit_samples: int = knob(50, "pixels per segment for the similarity fit (Magic Fixup: 50)", ge=3)
    ransac_thresh: float = knob(
        3.0, "RANSAC reprojection threshold (OpenCV's default, as Magic Fixup)", unit="px", gt=0
    )
    min_inlier_frac: float = knob(
        0.3, "below this a fit is rejected and the segment is flow-splatted", unit="frac", ge=0, le=1
    )
    hole_thresh: float = knob(
        0.5, "a pixel no segment covers is a hole when its splatted density is <= this", ge=0, lt=1
    )
    erode_px: int = knob(
        0,
        "erode each warped segment's alpha by a (2r+1)^2 square before compositing (Magic Fixup: 1, a 3x3 erosion)",
        unit="px",
        ge=0,
    )
    device: str = knob("auto", "SAM / DPT device: auto | cpu | cuda | cuda:N")
    num_gpus: float = knob(
        0.0, "GPUs per collage actor in the Ray runner (SAM / DPT); the weight-free backends never ask for one", ge=0
    )

    def check(self, prefix: str = "collage") -> None:
        need(
            self.device in ("auto", "cpu", "cuda") or str(self.device).startswith("cuda:"),
            f"{prefix}.device",
            f"{self.device!r} is not one of ['auto', 'cpu', 'cuda', 'cuda:N']",
        )


@dataclass
class SegmentFit:
    id: int
    area: int
    transform: Optional[np.ndarray]  # (2, 3) float64 src -> tgt, None when the segment is flow-splatted
    inliers: int = 0
    samples: int = 0
    residual_px: float = float("nan")
    median_flow_px: float = 0.0
    status: str = "ok"  # ok | fit_failed | degenerate | few_inliers
    depth: float = 0.0  # median disparity (set by make_collage)
    extra: dict = field(default_factory=dict)

    def to_meta(self) -> dict:
        t = None if self.transform is None else [[round(float(v), 5) for v in row] for row in self.transform]
        r = None if not np.isfinite(self.residual_px) else round(float(self.residual_px), 4)
        return {
            "id": int(self.id),
            "area": int(self.area),
            "transform": t,
            "depth": round(float(self.depth), 5),
            "residual_px": r,
            "inliers": int(self.inliers),
            "samples": int(self.samples),
            "median_flow_px": round(float(self.median_flow_px), 4),
            "status": self.status,
        }


def fit_segments(
    labels: np.ndarray,
    flow: np.ndarray,
    *,
    fit_samples: int = 50,
    ransac_thresh: float = 3.0,
    min_inlier_frac: float = 0.3,
    min_area: int = 0,
    rng: Optional[np.random.Generator] = None,
    residual_samples: int = 4096,
    valid: Optional[np.ndarray] = None,
) -> list[SegmentFit]:
    """One similarity per segment of ``labels`` (see the module docstring). Never raises on a
    degenerate segment: it gets ``transform=None`` and a ``status`` instead. ``valid``: (H, W) bool,
    where the flow is forward-backward consistent; a segment's fit samples are drawn there when at
    least a fifth of it is (what an occlusion hides has no correspondence to fit)."""
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = labels.shape
    n = int(labels.max()) + 1 if labels.size and labels.max() >= 0 else 0
    pixels = segment_pixels(labels, n)
    fl = np.asarray(flow, np.float32).reshape(-1, 2)
    ok_px = None if valid is None else np.asarray(valid, bool).reshape(-1)
    fits = []
    for k, pix in enumerate(pixels):
        area = len(pix)
        fit = SegmentFit(id=k, area=area, transform=None)
        fit.median_flow_px = segment_median_flow(flow, pix)
        if area <= max(min_area, 2):
            fit.status = "too_small"
            fits.append(fit)
            continue
        fit_pix = pix
        if ok_px is not None:
            vpix = pix[ok_px[pix]]
            if len(vpix) >= max(3, area // 5):
                fit_pix = vpix
        m = min(fit_samples, len(fit_pix))
        sel = fit_pix[rng.choice(len(fit_pix), size=m, replace=False)]
        xy = np.stack([sel % w, sel // w], axis=1).astype(np.float64)
        f = fl[sel].astype(np.float64)
        good = np.isfinite(f).all(axis=1)
        xy, f = xy[good], f[good]
        fit.samples = len(xy)
        A, inl = (None, 0)
        try:
            A, inl = fit_similarity(xy, xy + f, ransac_thresh)
        except cv2.error:
            A = None
        fit.inliers = inl
        if A is None or not np.isfinite(A).all():
            fit.status = "fit_failed"
        else:
            s, _ = _similarity_params(A)
            if not 0.25 <= s <= 4.0:
                fit.status = "degenerate"
            elif inl < max(2, min_inlier_frac * max(fit.samples, 1)):
                fit.status = "few_inliers"
            else:
                fit.transform = A
        A_r = fit.transform if fit.transform is not None else A
        if A_r is not None and np.isfinite(A_r).all():
            rs = pix if area <= residual_samples else pix[rng.choice(area, size=residual_samples, replace=False)]
            rxy = np.stack([rs % w, rs // w], axis=1).astype(np.float64)
            rf = fl[rs].astype(np.float64)
            ok = np.isfinite(rf).all(axis=1)
            fit.residual_px = residual_px(A_r, rxy[ok], rf[ok])
        fits.append(fit)
    return fits


def _warp_roi(A: np.ndarray, bbox: tuple[int, int, int, int], shape: tuple[int, int]):
    """Target ROI (y0, x0, h, w) that contains the source ``bbox`` (x0, y0, x1, y1) mapped by ``A``."""
    h, w = shape
    bx0, by0, bx1, by1 = bbox
    c = np.array([[bx0 - 1, by0 - 1], [bx1 + 1, by0 - 1], [bx0 - 1, by1 + 1], [bx1 + 1, by1 + 1]], np.float64)
    q = c @ A[:, :2].T + A[:, 2]
    x0, y0 = max(int(np.floor(q[:, 0].min())) - 1, 0), max(int(np.floor(q[:, 1].min())) - 1, 0)
    x1, y1 = min(int(np.ceil(q[:, 0].max())) + 2, w), min(int(np.ceil(q[:, 1].max())) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return None
    return y0, x0, y1 - y0, x1 - x0


def _splat_leftover(src: np.ndarray, tgt: np.ndarray, flow: np.ndarray, leftover: np.ndarray, device: str = "cpu"):
    """Softmax-splat only the ``leftover`` source pixels (Magic Fixup's metric); -> (rgb float32, density)."""
    import torch

    from vid2pair.stages.splat import magicfixup_metric, splat_with_density

    dev = torch.device(device)
    s = torch.from_numpy(np.ascontiguousarray(src)).to(dev).permute(2, 0, 1)[None].float() / 255.0
    t = torch.from_numpy(np.ascontiguousarray(tgt)).to(dev).permute(2, 0, 1)[None].float() / 255.0
    f = torch.from_numpy(np.ascontiguousarray(flow, np.float32)).to(dev).permute(2, 0, 1)[None]
    z = magicfixup_metric(s, t, f)
    # a non-finite metric drops the pixel from the splat: only leftover pixels contribute
    keep = torch.from_numpy(np.ascontiguousarray(leftover)).to(dev)[None, None]
    z = torch.where(keep, z, torch.full_like(z, float("nan")))
    out, dens = splat_with_density(s, f, z, mode="soft")
    return (out[0].permute(1, 2, 0).cpu().numpy() * 255.0).astype(np.float32), dens[0, 0].cpu().numpy()


def composite(
    src: np.ndarray,
    tgt: np.ndarray,
    flow: np.ndarray,
    labels: np.ndarray,
    fits: list[SegmentFit],
    order: list[int],
    disparity: Optional[np.ndarray] = None,
    *,
    hole_thresh: float = 0.5,
    device: str = "cpu",
    erode_px: int = 0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Warp kept segments back to front with a z-buffer, splat the rest.

    Returns ``(collage (H, W, 3) uint8, hole mask (H, W) uint8 255 = hole, owner, info)``;
    ``owner`` (H, W) int32 is the segment shown at each target pixel (-1: splat or hole) and
    ``contested`` in ``info`` the number of pixels two or more warped segments competed for.

    ``order``: segment ids from farthest to nearest; ``disparity`` (H, W) per-pixel disparity for the
    z-buffer (None: the rank in ``order``, i.e. the painter's algorithm).
    """
    h, w = labels.shape
    src_f = np.asarray(src, np.float32)
    canvas = np.zeros((h, w, 3), np.float32)
    zbuf = np.full((h, w), -np.inf, np.float32)
    covered = np.zeros((h, w), bool)
    owner = np.full((h, w), -1, np.int32)
    hits = np.zeros((h, w), np.uint8)
    n = len(fits)
    rank = np.zeros(n, np.float32)
    for r, k in enumerate(order):
        rank[k] = r + 1
    pixels = segment_pixels(labels, n)
    for k in order:
        fit = fits[k]
        if fit.transform is None:
            continue
        pix = pixels[k]
        ys, xs = pix // w, pix % w
        roi = _warp_roi(fit.transform, (xs.min(), ys.min(), xs.max(), ys.max()), (h, w))
        if roi is None:
            continue
        y0, x0, rh, rw = roi
        # warp only a crop of the source around the segment (2-px margin for the bilinear taps)
        sx0, sy0 = max(int(xs.min()) - 2, 0), max(int(ys.min()) - 2, 0)
        sx1, sy1 = min(int(xs.max()) + 3, w), min(int(ys.max()) + 3, h)
        B = fit.transform.copy()
        B[:, 2] = B[:, :2] @ np.array([sx0, sy0], np.float64) + B[:, 2] - (x0, y0)
        mask = np.zeros((sy1 - sy0, sx1 - sx0), np.float32)
        mask[ys - sy0, xs - sx0] = 1.0
        stack = [src_f[sy0:sy1, sx0:sx1], mask[..., None]]
        if disparity is not None:
            stack.append(np.asarray(disparity, np.float32)[sy0:sy1, sx0:sx1, None])
        warped = cv2.warpAffine(
            np.ascontiguousarray(np.concatenate(stack, axis=-1)),
            B,
            (rw, rh),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        m = warped[..., 3] > 0.5
        if erode_px > 0:
            m = cv2.erode(m.astype(np.uint8), np.ones((2 * erode_px + 1,) * 2, np.uint8)) > 0
        z = warped[..., 4] if disparity is not None else np.full((rh, rw), rank[k], np.float32)
        zr = zbuf[y0 : y0 + rh, x0 : x0 + rw]
        win = m & (z >= zr)
        canvas[y0 : y0 + rh, x0 : x0 + rw][win] = warped[..., :3][win]
        zr[win] = z[win]
        covered[y0 : y0 + rh, x0 : x0 + rw] |= win
        owner[y0 : y0 + rh, x0 : x0 + rw][win] = k
        hr = hits[y0 : y0 + rh, x0 : x0 + rw]
        hr[m] = np.minimum(hr[m], 254) + 1
    leftover = np.ones(h * w, bool)
    for k, fit in enumerate(fits):
        if fit.transform is not None:
            leftover[pixels[k]] = False
    leftover = leftover.reshape(h, w)
    filled = np.zeros((h, w), bool)
    if leftover.any():
        rgb, dens = _splat_leftover(src, tgt, flow, leftover, device)
        filled = ~covered & (dens > hole_thresh)
        canvas[filled] = rgb[filled]
    hole = ~(covered | filled)
    canvas[hole] = 0.0
    out = np.clip(np.rint(canvas), 0, 255).astype(np.uint8)
    info = {
        "segment_px": int(covered.sum()),
        "splat_px": int(filled.sum()),
        "leftover_src_px": int(leftover.sum()),
        "contested_px": int((hits >= 2).sum()),
    }
    return out, (hole.astype(np.uint8) * 255), owner, info


def make_collage(
    src: np.ndarray,
    tgt: np.ndarray,
    flow: np.ndarray,
    labels: np.ndarray,
    *,
    depth_model: Any = None,
    cfg: Any = None,
    moving_px: float = 1.0,
    rng: Optional[np.random.Generator] = None,
    device: str = "cpu",
    valid: Optional[np.ndarray] = None,
) -> dict:
    """The whole collage for one pair, given the segment label map. ``cfg``: a :class:`CollageConfig`.

    Returns ``{"collage", "mask", "owner", "fits", "order", "disparity", "meta", "ms"}``: ``meta`` is
    JSON-able and deterministic (it goes into the sample); ``ms`` holds the step timings.
    """
    from vid2pair.stages.depth import occlusion_order, order_to_disparity

    cfg = cfg or CollageConfig()
    t0 = time.perf_counter()
    fits = fit_segments(
        labels,
        flow,
        fit_samples=cfg.fit_samples,
        ransac_thresh=cfg.ransac_thresh,
        min_inlier_frac=cfg.min_inlier_frac,
        min_area=cfg.min_area,
        rng=rng,
        valid=valid,
    )
    t1 = time.perf_counter()
    n = len(fits)
    depth_info: dict = {"backend": "occlusion" if depth_model is None else "dpt"}
    disp_map = None
    if depth_model is None:
        moving = [f.median_flow_px > moving_px for f in fits]
        order, info = occlusion_order(
            src, tgt, labels, [f.transform for f in fits], moving, pixels=segment_pixels(labels, n)
        )
        depth_info.update(info)
        per_seg = order_to_disparity(order, n)
    else:
        disp_map = depth_model(src)
        pixels = segment_pixels(labels, n)
        per_seg = np.array([float(np.median(disp_map.reshape(-1)[p])) if len(p) else 0.0 for p in pixels])
        order = sorted(range(n), key=lambda k: (per_seg[k], k))  # farthest (smallest disparity) first
    for k, f in enumerate(fits):
        f.depth = float(per_seg[k])
    t2 = time.perf_counter()
    collage, mask, owner, cinfo = composite(
        src, tgt, flow, labels, fits, order, disp_map, hole_thresh=cfg.hole_thresh, device=device, erode_px=cfg.erode_px
    )
    t3 = time.perf_counter()
    hole_frac = float((mask > 0).mean())
    status: dict = {}
    for f in fits:
        status[f.status] = status.get(f.status, 0) + 1
    meta = {
        "segments": [f.to_meta() for f in fits],
        "hole_frac": round(hole_frac, 6),
        "n_segments": n,
        "status_counts": status,
        "depth": depth_info,
        **cinfo,
    }
    ms = {"fit": (t1 - t0) * 1e3, "depth": (t2 - t1) * 1e3, "composite": (t3 - t2) * 1e3}
    return {
        "collage": collage,
        "mask": mask,
        "owner": owner,
        "fits": fits,
        "order": order,
        "disparity": disp_map,
        "meta": meta,
        "ms": ms,
    }


def hole_wrong_pieces(p, it) -> Optional[int]:
    """Turn into holes the pasted pieces (segments, the ``collage_owner`` map) that draw most of what
    changed under them wrong: at least ``quality.collage_piece_max_wrong`` of their changed, drawn
    pixels differ from the target, and at least ``quality.collage_piece_min_wrong_frac`` of the frame,
    become holes where the frame changed (``R``: a segment of floor that spans the arena keeps its
    still part).
    A forearm carried with the body while the target raised it into a hug, a patch of floor pasted
    over a mouse's head: a hole there is honest (something is there, the collage does not know what),
    the piece teaches a wrong place. Returns how many pieces went (``collage_owner`` is dropped);
    None when the rule is off or the pair has no owner map."""
    a, c = it.arrays, p.c
    own = a.pop("collage_owner", None)
    if own is None or c.collage_piece_max_wrong is None or "collage" not in a or "collage_mask" not in a:
        return None
    holes = a["collage_mask"] > 0
    drawn = p.C & ~holes & (own >= 0)
    wrong = drawn & residual(a["collage"], p.tgt, c.change_thresh, p.sigma)
    wrong = cv2.morphologyEx(wrong.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    n = int(own.max()) + 1
    if n <= 0 or not wrong.any():
        return 0
    changed = np.bincount(own[drawn], minlength=n)
    bad = np.bincount(own[wrong], minlength=n)
    go = (bad >= c.collage_piece_max_wrong * np.maximum(changed, 1)) & (
        bad >= c.collage_piece_min_wrong_frac * own.size
    )
    if go.any():  # the piece where the frame changed (R); where nothing changed it is right as it is
        m = (own >= 0) & go[np.maximum(own, 0)] & p.R
        a["collage"] = np.where(m[..., None], 0, a["collage"]).astype(np.uint8)
        a["collage_mask"] = np.where(m, 255, a["collage_mask"]).astype(np.uint8)
    return int(go.sum())


def judge_collage(p, it, sc: dict, sig_fail: dict) -> None:
    """The collage's rules (its :attr:`~vid2pair.core.stage.Signal.judge`): its pieces that draw what
    changed under them wrong become holes (:func:`hole_wrong_pieces`), then the rules of a warped
    edit (:func:`~vid2pair.stages.evidence.judge_warped_edit`), with the gain ``quality.min_gain_db``
    asked of the collage both before and after the holing."""
    a, c = it.arrays, p.c
    if "collage" in a and "collage_mask" in a and "collage_owner" in a:
        # the gain floor is the collage's as it was made: holing its wrong pieces lifts its gain, and
        # must not let through a collage whose transforms did not follow what moved
        g0 = edit_scores("collage", a["collage"], a["collage_mask"] > 0, p.src, p.tgt, p.C, p.R, c, p.sigma)[
            "collage_gain_db"
        ]
        k = hole_wrong_pieces(p, it)
        if k is not None:
            sc["collage_holed_pieces"] = k
            it.meta.setdefault("collage", {})["holed_pieces"] = k
        if k:
            sc["collage_gain_as_made_db"] = g0
        if k and (g0 is None or g0 < c.min_gain_db):
            sig_fail.setdefault(
                "collage",
                ("collage_no_gain", f"collage gains {g0} dB over no edit on the changed region (< {c.min_gain_db})"),
            )
    judge_warped_edit("collage", c.min_gain_db, p, it, sc, sig_fail)


class CollageStage(PairStage):
    """Adds the collage, its hole mask and the region drags to each pair (CPU; SAM/DPT optional)."""

    name = "collage"
    sections = {"collage": CollageConfig, "region_drag": RegionDragConfig}
    reads = ("src", "tgt", "flow", "flow_valid", "rematched_src")
    provides = ("collage_owner",)
    writes = (
        Member("collage.png", "collage", "png"),
        Member("collage_mask.png", "collage_mask", "png"),
        Member("region_drag.json", "region_drag", "json"),
        Member("region_masks.png", "region_masks", "png"),
    )
    signals = (
        warped_edit_signal(
            "collage",
            "collage",
            judge_collage,
            count="n_segments",
            preview_rank=1,
            extra_scores=(Score("collage_holed_pieces", dtype="int64"),),
        ),
        Signal(
            "region_drag",
            ("region_drag.json", "region_masks.png"),
            "region_drag.enabled",
            requires=("collage.enabled",),
            judge=judge_region_drag,
            panels=("region_drag",),
            draw=draw_region_drag,
            scores=REGION_SCORES,
            metrics=REGION_METRICS,
        ),
    )

    @staticmethod
    def _uses_model(c: CollageConfig) -> bool:
        return c.segmenter == "sam" or c.depth == "dpt"

    @classmethod
    def resources(cls, cfg) -> Optional[Resources]:
        c = cfg.collage
        if not cls._uses_model(c):
            return None  # Felzenszwalb / SLIC + occlusion order: CPU, no model, never a GPU
        return Resources(actors=1, num_gpus=c.num_gpus, num_cpus=0.25, batch_size=2, gpu_key="collage.num_gpus")

    @classmethod
    def needs(cls, cfg) -> list[Need]:
        c = cfg.collage
        out = []
        if c.segmenter == "sam":
            out += [
                Need(
                    "weights",
                    f"sam_{c.sam_model_type}",
                    "collage.segmenter=sam",
                    path=c.sam_checkpoint,
                    path_key="collage.sam_checkpoint",
                ),
                Need("extra", "segment_anything", "collage.segmenter=sam", extra="collage"),
            ]
        if c.depth == "dpt":
            out += [
                Need("weights", c.dpt_model, "collage.depth=dpt", path=c.dpt_weights, path_key="collage.dpt_weights"),
                Need("extra", "transformers", "collage.depth=dpt", extra="collage"),
            ]
        return out

    def __init__(self, cfg, *, sam_model: Any = None, dpt_model: Any = None, dpt_processor: Any = None):
        super().__init__(cfg)
        self.ccfg: CollageConfig = cfg.collage
        self.rcfg: RegionDragConfig = cfg.region_drag
        self._inject = (sam_model, dpt_model, dpt_processor)
        self._segmenter = None
        self._depth = None
        self._depth_loaded = False

    @property
    def segmenter(self):
        if self._segmenter is None:
            from vid2pair.stages.segment import make_segmenter

            self._segmenter = make_segmenter(self.ccfg, model=self._inject[0])
        return self._segmenter

    @property
    def depth(self):
        if not self._depth_loaded:
            from vid2pair.stages.depth import make_depth

            self._depth = make_depth(self.ccfg, model=self._inject[1], processor=self._inject[2])
            self._depth_loaded = True
        return self._depth

    def process(self, items):
        try:
            _ = self.segmenter, self.depth
        except Exception as e:  # missing weights / extra: every pair is recorded with the reason
            return [
                pair_reject(it, "collage", "collage_backend_unavailable", f"{type(e).__name__}: {e}"[:500])
                for it in items
            ]
        return super().process(items)

    def one(self, it):
        bad = check_pair_arrays(it)
        if bad:
            return pair_reject(it, "collage", *bad)
        try:
            src, tgt, flow = it.arrays["src"], it.arrays["tgt"], it.arrays["flow"]
            labels = self.segmenter(src, flow)
            pieces = it.arrays.pop("rematched_src", None)
            if pieces is not None:  # objects the flow stage re-matched (stages/rematch.py): never half a segment
                from vid2pair.stages.rematch import split_segments

                labels = split_segments(labels, pieces)
            rng = rng_for(self.cfg.seed, it.key, "collage")
            moving_px = self.rcfg.moving_px * min(src.shape[:2]) / self.rcfg.reference_short_side
            res = make_collage(
                src,
                tgt,
                flow,
                labels,
                depth_model=self.depth,
                cfg=self.ccfg,
                moving_px=moving_px,
                rng=rng,
                device=str(resolve_device(self.ccfg.device)),
                valid=it.arrays.get("flow_valid"),
            )
            meta = res["meta"]  # no timings: reruns must write identical samples
            meta["segmenter"] = getattr(self.segmenter, "version", self.ccfg.segmenter)
            if self._depth is not None:
                meta["depth"]["version"] = getattr(self._depth, "version", "")
            it.arrays["collage"] = res["collage"]
            it.arrays["collage_mask"] = res["mask"]
            # which piece each pixel shows (-1: none), for the quality stage: int16 while the ids fit
            own = res["owner"]
            it.arrays["collage_owner"] = own.astype(np.int16) if own.max(initial=-1) < 2**15 - 1 else own
            it.meta["collage"] = meta
            if self.rcfg.enabled:
                drag, masks = region_drags(labels, res["fits"], flow, self.rcfg, rng=rng, images=(src, tgt))
                it.arrays["region_masks"] = masks
                it.meta["region_drag"] = drag
        except Exception as e:
            return pair_reject(it, "collage", "collage_failed", f"{type(e).__name__}: {e}"[:500])
        return it


def default_stage_config(**collage_kw) -> SimpleNamespace:
    """A minimal config namespace (``collage``, ``region_drag``, ``seed``) for tests and scripts."""
    return SimpleNamespace(collage=CollageConfig(**collage_kw), region_drag=RegionDragConfig(), seed=0)
