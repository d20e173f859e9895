"""Region drags with an operation type (DragNeXt-style instructions) from the collage's segment fits.

A region drag says: *this region* (a mask) moves; here are handle points on it and where they
go; and the kind of operation, named as DragNeXt names them: ``translation``, ``rotation``,
``scaling``, their combinations joined by ``+`` (``translation+scaling``: an object that comes
towards the camera while it moves), or ``deformation``.

How regions are found (:func:`region_drags`)
--------------------------------------------
1. Moving segments: segments of the collage label map whose median flow magnitude exceeds
   ``moving_px`` (given at ``reference_short_side``, scaled with the frame's short side).
2. Merging (``merge``): two adjacent moving segments are one region when a single similarity,
   fitted to the flow of both, leaves a 75th-percentile residual <= ``merge_tol_px`` (so an
   over-segmented rigid object is one drag, not five). Pairs are merged best-first
   (union-find); residual thresholds are in frame px because they are about flow noise,
   which does not grow with the resolution.
3. Per region a similarity is refitted to the flow of up to ``fit_samples`` of its pixels
   (RANSAC, ``ransac_thresh`` px): ``angle_deg`` (positive = clockwise on screen, y points
   down), ``scale``, ``residual_px`` (median ``|A p - (p + flow(p))|`` over the region) and
   ``residual_p75_px``.
4. Type (:func:`classify`): ``deformation`` when the similarity does not explain the flow, i.e.
   the 75th percentile residual exceeds ``deformation_ratio`` x the region's median motion and
   ``deformation_min_px`` (a percentile, not the median, because RANSAC fits the largest rigid
   part: for two halves moving apart the median sits on the boundary between inliers and
   outliers). Otherwise what the fitted similarity does, each part with its tolerance:
   ``translation`` when it moves the region's centroid by ``translation_px`` or more (px@512),
   ``rotation`` when ``|angle_deg| >= rotation_deg``, ``scaling`` when ``|scale - 1| >=
   scaling_tol``; the parts present, in that order, joined by ``+``. A region that moves (the
   ``moving_px`` rule) but stays under every tolerance is typed by its largest part relative to
   its tolerance.
5. Points: ``center`` is the region's centroid (the nearest region pixel if the centroid falls
   outside it); ``handles`` are the center followed by ``n_handles - 1`` farthest-point samples
   of the region's interior (pixels >= 3 px from its border when there are any). With the pair's
   images (``handles_seen``), both only where the region is seen to move (:func:`seen_moving`:
   textured, matched better moved than in place), when any pixel is: a mask that took in floor
   beside a tail puts no handle on the floor. ``targets``
   are where the fitted similarity sends the handles for every rigid type, and the handles plus
   the (5x5 median, region-only) flow for ``deformation``.

Regions are ordered by area (largest first), at most ``max_regions``; ``mask_index`` is the
position in that order. The masks are returned as one label map ``(H, W)`` uint8 with value
``mask_index + 1`` on region ``mask_index`` and 0 elsewhere (regions are disjoint because the
segments partition the source): a single PNG, unlike a (K, H, W) stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import cv2
import numpy as np

from vid2pair.core.items import PairItem
from vid2pair.core.spec import frame_scale, knob
from vid2pair.core.stage import Metrics, Score
from vid2pair.ops.draw import REGION_TYPES, TYPE_COLOR_NAMES, TYPE_COLORS, Panel, PanelView, draw_region_drags
from vid2pair.ops.similarity import _similarity_params, fit_similarity, segment_median_flow
from vid2pair.stages.evidence import blur_gray, in_mask, moved_not_still, sample_field, textured

__all__ = ["RegionDragConfig", "region_drags", "classify", "TYPES"]

#: the parts a type is made of (a rigid type joins the parts present with ``+``)
TYPES = ("translation", "rotation", "scaling", "deformation")


@dataclass
class RegionDragConfig:
    """Region drags from the collage's segments, with an operation type."""

    enabled: bool = knob(True, "region_drag.json + region_masks.png (needs the collage)")
    reference_short_side: int = knob(
        512, "the px@512 knobs are for this short side, scaled to the frame", unit="px", gt=0
    )
    moving_px: float = knob(2.0, "a segment moves when its median flow magnitude exceeds this", unit="px@512", ge=0)
    translation_px: float = knob(
        2.0, "the similarity moves the region's centroid by this or more: translation", unit="px@512", gt=0
    )
    rotation_deg: float = knob(5.0, "|similarity angle| >= this: rotation", unit="deg", gt=0, lt=180)
    scaling_tol: float = knob(0.05, "|similarity scale - 1| >= this: scaling (1.05: the outline grows by 5 %)", gt=0)
    deformation_ratio: float = knob(
        0.25, "p75 residual > ratio x median motion (and > deformation_min_px): deformation", gt=0
    )
    deformation_min_px: float = knob(
        2.0, "a flow-noise floor for deformation (not scaled with the frame)", unit="px", ge=0
    )
    deformation_size_ratio: float = knob(
        0.25,
        "p75 residual > this x the region's size (the square root of its area): deformation, however "
        "far it moved (a similarity that misses by a quarter of the region is no rigid move)",
        gt=0,
    )
    merge: bool = knob(True, "merge adjacent moving segments that one similarity explains")
    merge_tol_px: float = knob(2.0, "... with a p75 residual <= this (not scaled)", unit="px", ge=0)
    n_handles: int = knob(4, "points per region (the centre included)", ge=1)
    handles_seen: bool = knob(
        True,
        "with the pair's images: handles (the centre included) only on mask pixels seen to move, "
        "on texture, where the source's 5x5 patch moved by the region's motion matches the target "
        "better than in place at either end (evidence.moved_not_still); a mask that took in floor "
        "beside a dog's tail puts no handle on the floor. Where no pixel is seen to move, or false: "
        "anywhere in the mask",
    )
    max_regions: int = knob(16, "regions kept per pair (the mask label map is uint8)", ge=1, le=255)
    fit_samples: int = knob(400, "pixels per region for the refit", ge=3)
    ransac_thresh: float = knob(3.0, "RANSAC threshold of the region similarity fits", unit="px", gt=0)


def classify(
    angle_deg: float,
    scale: float,
    residual_p75: float,
    motion: float,
    cfg: RegionDragConfig,
    shift_px: Optional[float] = None,
    px_scale: float = 1.0,
    size_px: Optional[float] = None,
) -> str:
    """Operation type from the region's similarity and its fit residual (see the module docstring).
    ``shift_px``: how far the similarity moves the region's centroid (default: ``motion``, the
    median flow); ``px_scale``: the frame's short side / ``reference_short_side``; ``size_px``: the
    square root of the region's area (None: no size rule)."""
    if residual_p75 > max(cfg.deformation_ratio * motion, cfg.deformation_min_px):
        return "deformation"
    if size_px is not None and residual_p75 > max(cfg.deformation_size_ratio * size_px, cfg.deformation_min_px):
        return "deformation"
    shift = motion if shift_px is None else shift_px
    rel = {
        "translation": shift / (cfg.translation_px * px_scale),
        "rotation": abs(angle_deg) / cfg.rotation_deg,
        "scaling": abs(scale - 1.0) / cfg.scaling_tol,
    }
    parts = [t for t, r in rel.items() if r >= 1.0]
    return "+".join(parts) if parts else max(rel, key=rel.get)


def _adjacent_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        sel = (a != b) & (a >= 0) & (b >= 0)
        if sel.any():
            u = np.unique(np.stack([np.minimum(a[sel], b[sel]), np.maximum(a[sel], b[sel])], 1), axis=0)
            pairs.update((int(x), int(y)) for x, y in u)
    return pairs


def _find(parent: list[int], i: int) -> int:
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def _farthest_points(xy: np.ndarray, start: np.ndarray, k: int) -> list[np.ndarray]:
    """``k`` farthest-point samples of ``xy`` (N, 2), starting from the distance to ``start``."""
    out = []
    d = np.hypot(*(xy - start).T)
    for _ in range(k):
        if len(xy) == 0 or d.max() <= 0:
            break
        i = int(np.argmax(d))
        out.append(xy[i])
        d = np.minimum(d, np.hypot(*(xy - xy[i]).T))
    return out


def _local_flow(flow: np.ndarray, region: np.ndarray, x: int, y: int, r: int = 2) -> np.ndarray:
    h, w = region.shape
    y0, y1, x0, x1 = max(y - r, 0), min(y + r + 1, h), max(x - r, 0), min(x + r + 1, w)
    sel = region[y0:y1, x0:x1]
    f = flow[y0:y1, x0:x1][sel]
    return np.median(f, axis=0) if len(f) else flow[y, x]


def _place_handles(region: np.ndarray, r: dict, flow: np.ndarray, cfg, rng, images) -> list[np.ndarray]:
    """A region's handles: its centre (the centroid, or the nearest mask pixel) and the farthest
    points from it 3 px or more inside the mask; with ``images`` and ``cfg.handles_seen``, both
    among the pixels :func:`seen_moving` finds, when any."""
    h, w = region.shape
    ys, xs = r["pix"] // w, r["pix"] % w
    cx, cy = float(xs.mean()), float(ys.mean())
    if not region[int(round(cy)), int(round(cx))]:
        j = int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))
        cx, cy = float(xs[j]), float(ys[j])
    dist = cv2.distanceTransform(np.pad(region, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    inner = dist[ys, xs] >= 3
    if images is not None and cfg.handles_seen:
        seen = seen_moving(*images, xs, ys, r["A"] if r["type"] != "deformation" else None, flow)
        if seen.any():
            if not seen[int(np.argmin((xs - cx) ** 2 + (ys - cy) ** 2))]:
                j = np.flatnonzero(seen)[np.argmin((xs[seen] - cx) ** 2 + (ys[seen] - cy) ** 2)]
                cx, cy = float(xs[j]), float(ys[j])
            inner = (inner & seen) if (inner & seen).any() else seen
    center = np.array([cx, cy])
    cand = np.stack([xs, ys], 1).astype(np.float64)[inner if inner.any() else slice(None)]
    if len(cand) > 4000:
        cand = cand[rng.choice(len(cand), size=4000, replace=False)]
    return [center] + _farthest_points(cand, center, cfg.n_handles - 1)


def region_drags(
    labels: np.ndarray,
    fits: Sequence,
    flow: np.ndarray,
    cfg: Optional[RegionDragConfig] = None,
    *,
    rng: Optional[np.random.Generator] = None,
    images: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> tuple[dict, np.ndarray]:
    """Region drags for one pair -> (JSON-able dict, (H, W) uint8 region label map).

    ``labels``: the collage's segment label map (-1 = none); ``fits``: its
    :class:`stages.collage.SegmentFit` list (``transform`` may be None); ``flow`` (H, W, 2) src -> tgt.
    ``images``: the pair's (source, target); with them and ``cfg.handles_seen``, handles sit
    where the region is seen to move (:func:`seen_moving`).
    """
    from vid2pair.stages.segment import segment_pixels

    cfg = cfg or RegionDragConfig()
    rng = rng if rng is not None else np.random.default_rng(0)
    h, w = labels.shape
    flow = np.asarray(flow, np.float32)
    px_scale = frame_scale((h, w), "px@512", cfg.reference_short_side)
    n = len(fits)
    pixels = segment_pixels(labels, n)
    moving = [len(pixels[k]) > 0 and fits[k].median_flow_px > cfg.moving_px * px_scale for k in range(n)]

    fl = flow.reshape(-1, 2).astype(np.float64)

    def sample(pix: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
        sel = pix if len(pix) <= m else pix[rng.choice(len(pix), size=m, replace=False)]
        xy = np.stack([sel % w, sel // w], 1).astype(np.float64)
        f = fl[sel]
        ok = np.isfinite(f).all(axis=1)
        return xy[ok], f[ok]

    parent = list(range(n))
    if cfg.merge:
        # adjacent moving segments are one region when ONE similarity explains both (75th
        # percentile residual <= merge_tol_px): an over-segmented rigid object becomes one drag
        cands = []
        for a, b in sorted(_adjacent_pairs(labels)):
            if not (moving[a] and moving[b]):
                continue
            xy, f = sample(np.concatenate([pixels[a], pixels[b]]), cfg.fit_samples)
            A, _ = fit_similarity(xy, xy + f, cfg.ransac_thresh)
            if A is None or not np.isfinite(A).all():
                continue
            r75 = float(np.percentile(np.hypot(*((xy @ A[:, :2].T + A[:, 2]) - xy - f).T), 75))
            if r75 <= cfg.merge_tol_px:
                cands.append((r75, a, b))
        for _, a, b in sorted(cands):
            parent[_find(parent, a)] = _find(parent, b)
    groups: dict[int, list[int]] = {}
    for k in range(n):
        if moving[k]:
            groups.setdefault(_find(parent, k), []).append(k)

    regions = []
    for segs in groups.values():
        pix = np.concatenate([pixels[k] for k in segs])
        motion = segment_median_flow(flow, pix)
        if motion <= cfg.moving_px * px_scale:
            continue
        xy, f = sample(pix, cfg.fit_samples)
        m = len(xy)
        A, inl = fit_similarity(xy, xy + f, cfg.ransac_thresh)
        if A is None or not np.isfinite(A).all():
            A, inl = None, 0
        rxy, rf = sample(pix, 4096)
        if A is not None and len(rxy):
            res = np.hypot(*((rxy @ A[:, :2].T + A[:, 2]) - rxy - rf).T)
            r50, r75 = float(np.median(res)), float(np.percentile(res, 75))
            scale, angle = _similarity_params(A)
        else:
            r50 = r75 = float("inf")
            scale, angle = 1.0, 0.0
        c = np.array([float((pix % w).mean()), float((pix // w).mean())])
        shift = float(np.hypot(*(A[:, :2] @ c + A[:, 2] - c))) if A is not None else motion
        kind = classify(angle, scale, r75, motion, cfg, shift, px_scale, size_px=float(np.sqrt(len(pix))))
        regions.append(
            {
                "segs": sorted(segs),
                "pix": pix,
                "A": A,
                "motion": motion,
                "r50": r50,
                "r75": r75,
                "scale": scale,
                "angle": angle,
                "type": kind,
                "inliers": inl,
                "samples": m,
                "shift": shift,
            }
        )
    regions.sort(key=lambda r: (-len(r["pix"]), r["segs"][0]))
    regions = regions[: cfg.max_regions]

    masks = np.zeros((h, w), np.uint8)
    out = []
    for i, r in enumerate(regions):
        region = np.zeros(h * w, bool)
        region[r["pix"]] = True
        region = region.reshape(h, w)
        masks[region] = i + 1
        handles = _place_handles(region, r, flow, cfg, rng, images)
        center = handles[0]
        targets = []
        for p in handles:
            if r["type"] == "deformation" or r["A"] is None:
                targets.append(p + _local_flow(flow, region, int(round(p[0])), int(round(p[1]))))
            else:
                targets.append(r["A"][:, :2] @ p + r["A"][:, 2])

        def pt(p):
            return [round(float(p[0]), 2), round(float(p[1]), 2)]

        out.append(
            {
                "id": i,
                "type": r["type"],
                "center": pt(center),
                "handles": [pt(p) for p in handles],
                "targets": [pt(p) for p in targets],
                "angle_deg": round(r["angle"], 3),
                "scale": round(r["scale"], 5),
                "shift_px": round(r["shift"], 3),
                "residual_px": round(r["r50"], 4) if np.isfinite(r["r50"]) else None,
                "residual_p75_px": round(r["r75"], 4) if np.isfinite(r["r75"]) else None,
                "motion_px": round(r["motion"], 4),
                "area": int(len(r["pix"])),
                "segments": r["segs"],
                "inliers": int(r["inliers"]),
                "samples": int(r["samples"]),
                "transform": None if r["A"] is None else [[round(float(v), 5) for v in row] for row in r["A"]],
                "mask_index": i,
            }
        )
    return {"image_size": [int(w), int(h)], "regions": out, "mask_encoding": "label map: value mask_index + 1"}, masks


def seen_moving(src: np.ndarray, tgt: np.ndarray, xs: np.ndarray, ys: np.ndarray, A, flow: np.ndarray) -> np.ndarray:
    """(N,) bool for the pixels (xs, ys) of a region: moved by the similarity ``A`` (or, with ``A``
    None, by ``flow`` at the pixel) they land inside the frame, on textured source
    (:func:`~vid2pair.stages.evidence.textured`: a plain patch matches any plain patch), and their
    5x5 patch matches the target there better than in place at either end
    (:func:`~vid2pair.stages.evidence.moved_not_still`), 2 px or more inside the rim of such pixels
    (when any is): the pixel is seen to move. Floor or wall inside the mask beside a mover matches
    in place."""
    p = np.stack([xs, ys], 1).astype(np.float32)
    if A is not None:
        A = np.asarray(A, np.float32)
        q = p @ A[:, :2].T + A[:, 2]
    else:
        q = p + np.asarray(flow, np.float32)[ys, xs]
    h, w = src.shape[:2]
    ok = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
    ok &= textured(src)[ys, xs]
    k = np.flatnonzero(ok)
    ok[k] = moved_not_still(src, tgt, np.concatenate([p[k], q[k]], 1), radius=2, both_ends=True)
    # the patch of a floor pixel at the mover's rim holds some of the mover: 2 px in from the rim of
    # what is seen
    seen = np.zeros((h, w), np.uint8)
    seen[ys[ok], xs[ok]] = 1
    inner = cv2.erode(seen, np.ones((5, 5), np.uint8))[ys, xs] > 0
    return inner if inner.any() else ok


def region_moves_onto_target(
    mask: np.ndarray, transform, gs: np.ndarray, gt: np.ndarray, R: np.ndarray, c, max_points: int = 4000
) -> bool:
    """A region drag's mask, moved by its transform, lands on what changed and explains the target
    there better than the region left in place does (a mask on still road where a walker arrives
    explains nothing when moved), in grey levels and in grey levels normalised per side (a still
    surface whose exposure changed is explained best in place)."""
    if transform is None:
        return True  # no transform to check: the share on the change decides
    ys, xs = np.nonzero(mask)
    step = max(1, len(xs) // max_points)
    p = np.stack([xs[::step], ys[::step]], 1).astype(np.float32)
    if not len(p):
        return False
    A = np.asarray(transform, np.float32)
    q = p @ A[:, :2].T + A[:, 2]
    h, w = mask.shape
    inside = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
    if inside.mean() < c.region_min_on_change or in_mask(R, q[inside]).mean() < c.region_min_on_change:
        return False
    a = sample_field(gs, p[inside])[:, 0]
    b_moved, b_still = sample_field(gt, q[inside])[:, 0], sample_field(gt, p[inside])[:, 0]
    moved, still = float(np.abs(a - b_moved).mean()), float(np.abs(a - b_still).mean())
    # ... and so it does with the brightness and contrast of each side taken out (z-scores): a
    # still door whose exposure changed differs from the target in place, yet matches it exactly
    # once its grey levels are scaled
    z_moved, z_still = float(np.abs(_z(a) - _z(b_moved)).mean()), float(np.abs(_z(a) - _z(b_still)).mean())
    return moved <= c.region_max_error_ratio * still and z_moved <= c.region_max_error_ratio * z_still


def misses_a_turn(mask: np.ndarray, transform, gs: np.ndarray, gt: np.ndarray, ratio: float, steps: int = 12) -> bool:
    """The region's source mask, turned about its centroid by one of ``steps`` equal steps of a full
    turn and then moved by ``transform``, matches the target (mean absolute difference of the grey
    levels normalised per side) with at most ``ratio`` times the error of ``transform`` alone: the
    transform misses a turn (a mouse that turned round as it went, fitted as a shift or a shear)."""
    if transform is None or ratio <= 0:
        return False
    ys, xs = np.nonzero(mask)
    step = max(1, len(xs) // 4000)
    p = np.stack([xs[::step], ys[::step]], 1).astype(np.float64)
    if len(p) < 20:
        return False
    c = p.mean(0)
    A = np.asarray(transform, np.float64)
    h, w = mask.shape
    a = sample_field(gs, p.astype(np.float32))[:, 0]

    def error(turn: float) -> float:
        r = np.array([[np.cos(turn), -np.sin(turn)], [np.sin(turn), np.cos(turn)]])
        q = ((p - c) @ r.T + c) @ A[:, :2].T + A[:, 2]
        inside = (q[:, 0] >= 0) & (q[:, 0] <= w - 1) & (q[:, 1] >= 0) & (q[:, 1] <= h - 1)
        if inside.mean() < 0.5:
            return np.inf
        b = sample_field(gt, q[inside].astype(np.float32))[:, 0]
        return float(np.abs(_z(a[inside]) - _z(b)).mean())

    errs = [error(2 * np.pi * k / steps) for k in range(steps)]
    return bool(min(errs[1:]) <= ratio * errs[0])


def _z(v: np.ndarray) -> np.ndarray:
    """Grey levels normalised (z-scores): brightness and contrast taken out."""
    return (v - v.mean()) / max(float(v.std()), 1e-6)


def judge_region_drag(p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The region-drag signal's rules (its :attr:`~vid2pair.core.stage.Signal.judge`): regions on
    what changed, large enough, moving visibly, consistent, and explaining the target when moved;
    the others are removed."""
    a, meta, c, R = it.arrays, it.meta, p.c, p.R
    if "region_drag" not in meta or "region_masks" not in a:
        return
    regions = meta["region_drag"].get("regions") or []
    labels = a["region_masks"]
    keep = []
    blur_s = blur_gray(p.src, p.sigma), blur_gray(p.tgt, p.sigma)
    for r in regions:
        m = labels == r["mask_index"] + 1
        frac = float((m & R).sum() / max(1, m.sum()))
        consistent = 1.0 if p.vf is None else float(p.vf[m].mean())  # (a plain halo the flow leaked onto is not)
        move = max(float(r.get("motion_px") or 0.0), float(r.get("shift_px") or 0.0))
        if m.mean() < c.region_min_area or move < c.min_motion_px * p.s:
            continue
        if (
            frac >= c.region_min_on_change
            and consistent >= c.region_min_consistent
            and region_moves_onto_target(m, r.get("transform"), *blur_s, R, c)
            and not misses_a_turn(m, r.get("transform"), *blur_s, c.region_turn_ratio)
        ):
            keep.append(r)
    lut = np.zeros(256, np.uint8)
    for i, r in enumerate(keep):
        lut[r["mask_index"] + 1] = i + 1
        r["id"] = r["mask_index"] = i
    a["region_masks"] = lut[labels]
    meta["region_drag"]["regions"] = keep
    sc["region_total"], sc["region_valid"] = len(regions), len(keep)
    if not keep:
        sig_fail.setdefault(
            "region_drag",
            (
                "region_off_change",
                f"none of {len(regions)} regions lies on what "
                f"changed (>= {c.region_min_on_change} of its mask), "
                f"covers >= {c.region_min_area} of the frame, moves "
                f">= {c.min_motion_px * p.s:.1f} px and, moved by "
                f"its transform, explains the target",
            ),
        )


def draw_region_drag(v: PanelView) -> list[Panel]:
    """The region drags' QC panel (its :attr:`~vid2pair.core.stage.Signal.draw`): each region on the
    source in the colour of its operation type, with its handle -> target arrows."""
    rd = v.sample.json("region_drag.json")
    if rd is None or v.src is None:
        return [v.missing("region_drag", "region drags", "region_drag.json", "region_drag")]
    regions = rd.get("regions", [])
    counts = {t: sum(t in str(r.get("type")).split("+") for r in regions) for t in REGION_TYPES}
    desc = ", ".join(f"{c} {t} ({TYPE_COLOR_NAMES[t]})" for t, c in counts.items() if c) or "none (nothing moves)"
    img = draw_region_drags(v.disp(v.src), v.mask(v.sample.image("region_masks")), regions, sx=v.sx, sy=v.sy)
    return [Panel("region_drag", f"region drags on source: {desc}", img)]


# --------------------------------------------------------------------------- what QC measures

#: the scores :func:`judge_region_drag` writes
REGION_SCORES = (Score("region_total", "int64"), Score("region_valid", "int64"))


def _measure_region_drag(meta: dict, read) -> dict:
    """region_n and, per type part (translation, rotation, scaling, deformation), how many regions have it."""
    region = read("region_drag.json")
    region = meta.get("region_drag") if region is None else region
    regions = (region or {}).get("regions", [])
    types = [r.get("type") for r in regions]
    return {
        "region_n": len(regions) if region is not None else None,
        **{
            f"region_{t}": (sum(t in str(x).split("+") for x in types) if region is not None else None)
            for t in REGION_TYPES
        },
    }


def _plot_region_drag(view) -> None:
    """Bars: regions per type part; the pairs with no region below."""
    ax = view.ax
    ax.set_title("region drag types" + view.sub, fontsize=10)
    n = view.col("region_n")
    if not n.size:
        view.missing()
        return
    counts = [int(view.col(f"region_{t}").sum()) for t in REGION_TYPES]
    bars = ax.bar(REGION_TYPES, counts, color=[np.array(TYPE_COLORS[t]) / 255 for t in REGION_TYPES])
    ax.bar_label(bars, fontsize=8)
    ax.set_ylabel("regions", fontsize=9)
    ax.set_xlabel(f"pairs with no region: {int((n == 0).sum())}", fontsize=9)
    ax.tick_params(labelsize=8)


REGION_METRICS = Metrics(
    ("region_n", *(f"region_{t}" for t in REGION_TYPES)),
    _measure_region_drag,
    lambda v: None if v["region_n"] is None else f"{v['region_n']} region drags",
    _plot_region_drag,
)
