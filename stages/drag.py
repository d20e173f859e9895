"""Drag points (handle -> target) and the editable-region mask, from flow and target->source tracks.

Recipe (LightningDrag, used by FramePainter): sample TARGET points with probability proportional
to the optical-flow magnitude there, with a minimum spacing, and read each point's SOURCE
position from the target->source tracks. The points are drawn among the tracker's query grid
(:func:`pick_grid_points`; one point per latent token, 8 px at 576x1024), so the tracker is
called with exactly the grid: ``tracks.npy`` is what the tracker gives for it (a joint tracker
such as CoTracker3 tracks points together, so extra queries would move the others). Points the
tracker marks invisible are dropped.

Convention (``direction``)
--------------------------
``source_to_target`` (default): the handle lies on the SOURCE image and is dragged to the
TARGET position, i.e. editing ``src`` with the drags should give ``tgt``. Each JSON point is
``{"source": [x, y] on src, "target": [x, y] on tgt}`` in stored-image pixels (pixel centres at
integers). ``target_to_source`` swaps the two positions of every point (edits ``tgt`` into
``src``); the mask, the union of both sides, is the same.

Target-side flow magnitude
--------------------------
The flow stage gives ``flow`` src -> tgt, sampled on SOURCE pixels. :func:`target_side_magnitude`
forward-splats ``|flow|`` to ``round(x + flow(x))`` keeping the maximum (a moving object lands on
top of the static background it covers, so the max is the visible motion) and fills
single-pixel holes from their neighbours; disoccluded areas receive nothing and stay 0 (they are
not on a moving object in the target). It is available before tracking, so drag points are
tracked in the same call as the grid, for every backend. The stage uses the splat even when
``flow_bwd`` exists: with chained flow the backward flow is a direct one, which fails on large
motion (on 8 synthetic clips with chained DIS: 56 points kept with the splat, 43 with
``|flow_bwd|``); ``target_side_magnitude(flow, flow_bwd)`` returns ``|flow_bwd|`` for callers
that trust it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional

import cv2
import numpy as np

from vid2pair.core.items import PairItem
from vid2pair.core.spec import knob
from vid2pair.core.stage import Metrics, Score, TrainInput
from vid2pair.ops.draw import (
    PALETTE,
    Panel,
    PanelView,
    _points_array,
    _resize,
    draw_drag_arrows,
    overlay_mask,
    scale_points,
)
from vid2pair.stages.evidence import changed_in_place, in_mask, moved_not_still, patch_ncc, sample_field

__all__ = [
    "DragConfig",
    "target_side_magnitude",
    "drag_weights",
    "sample_drag_points",
    "pick_grid_points",
    "add_matches",
    "flow_agreement",
    "drag_mask",
    "drag_json",
    "DIRECTIONS",
]

DIRECTIONS = ("source_to_target", "target_to_source")


@dataclass
class DragConfig:
    """Drag points: sampled on the target where it moves, their handles from the tracks."""

    k: int = knob(
        16,
        "points stored per pair (up to); the trainer draws any 1..k of them per step, whereas points "
        "cannot be added later without tracking again",
        ge=0,
    )
    min_spacing_px: float = knob(24.0, "no two target points closer than this", unit="px", ge=0)
    min_flow_px: float = knob(2.0, "target pixels moving less than this are never sampled", unit="px", ge=0)
    mask_dilate_px: int = knob(16, "dilation of the moving region + handles/targets for drag_mask", unit="px", ge=0)
    flow_check_px: float = knob(
        3.0,
        "drop a point whose tracked source, moved by the src->tgt flow, misses its "
        "target by more than this + 5 % of its displacement; 0 disables",
        unit="px",
        ge=0,
    )
    matches: bool = knob(
        False,
        "also take drags from sparse, verified SIFT matches between source and target on "
        "what changed (mutual, ratio test, patch NCC >= 0.5, moving >= min_flow_px): they "
        "survive moves a chained flow loses (hands, bodies, a pushed coin); the tracker's "
        "drags come first, matches fill up to k",
    )
    direction: Literal["source_to_target", "target_to_source"] = knob(
        "source_to_target", "drag.json point order: handle on the source, target on the target (or reversed)"
    )


def _magnitude(flow: np.ndarray) -> np.ndarray:
    f = np.asarray(flow, np.float32)
    return np.sqrt(f[..., 0] ** 2 + f[..., 1] ** 2)


def target_side_magnitude(flow: np.ndarray, flow_bwd: Optional[np.ndarray] = None) -> np.ndarray:
    """(H, W) float32 motion magnitude at TARGET pixels (see the module docstring)."""
    if flow_bwd is not None:
        return _magnitude(flow_bwd)
    flow = np.asarray(flow, np.float32)
    h, w = flow.shape[:2]
    mag = _magnitude(flow)
    ys, xs = np.mgrid[0:h, 0:w]
    tx = np.rint(xs + flow[..., 0])
    ty = np.rint(ys + flow[..., 1])
    ok = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h) & np.isfinite(mag)
    out = np.full(h * w, -1.0, np.float32)  # -1: nothing landed here
    np.maximum.at(out, (ty[ok] * w + tx[ok]).astype(np.int64), mag[ok])
    out = out.reshape(h, w)
    holes = out < 0
    if holes.any():
        filled = cv2.dilate(out, np.ones((3, 3), np.uint8))  # max of the 3x3 neighbourhood
        out[holes] = filled[holes]
    return np.maximum(out, 0.0)


def drag_weights(mag_tgt: np.ndarray, min_flow_px: float, margin_px: int = 3) -> np.ndarray:
    """Sampling weights: the target-side magnitude where it is >= ``min_flow_px``, 0 elsewhere,
    and 0 within ``margin_px`` of the moving region's outline (mixed, ambiguous pixels whose
    tracks are the least reliable) unless that would leave nothing to sample."""
    mag = np.where(np.isfinite(mag_tgt), mag_tgt, 0.0).astype(np.float32)
    moving = mag >= max(float(min_flow_px), 1e-6)
    if margin_px > 0 and moving.any():
        k = 2 * int(margin_px) + 1
        inner = cv2.erode(moving.astype(np.uint8), np.ones((k, k), np.uint8), borderType=cv2.BORDER_REPLICATE) > 0
        if inner.any():
            moving = inner
    return np.where(moving, mag, 0.0).astype(np.float32)


def sample_drag_points(
    flow_mag_at_target: np.ndarray, k: int, min_spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``k`` target points (K, 2) float32 ``(x, y)`` at pixel centres.

    Weighted sampling without replacement, probability proportional to the magnitude (pixels
    with magnitude <= 0 or non-finite are never chosen: zero them to exclude static pixels),
    keeping only points at least ``min_spacing`` px from every point already chosen. Implemented
    as a random order with keys ``E / w`` (``E`` ~ Exp(1)), the exponential form of
    Efraimidis-Spirakis, scanned greedily; the same ``rng`` state gives the same points.
    Fewer than ``k`` points come back when the moving area cannot hold more.
    """
    mag = np.asarray(flow_mag_at_target, np.float64)
    if mag.ndim != 2:
        raise ValueError(f"flow magnitude must be (H, W), got {mag.shape}")
    if k <= 0:
        return np.zeros((0, 2), np.float32)
    h, w = mag.shape
    flat = np.where(np.isfinite(mag), mag, 0.0).ravel()
    cand = np.flatnonzero(flat > 0)
    if cand.size == 0:
        return np.zeros((0, 2), np.float32)
    keys = rng.exponential(size=cand.size) / flat[cand]
    order = cand[np.argsort(keys, kind="stable")]
    r2 = float(min_spacing) ** 2
    blocked = np.zeros((h, w), np.uint8)
    inner = int(math.floor(min_spacing / math.sqrt(2.0))) - 1  # square surely inside the disc
    chosen: list[tuple[int, int]] = []
    chunk = 4096
    for s in range(0, order.size, chunk):
        part = order[s : s + chunk]
        part = part[blocked.ravel()[part] == 0]  # cheap reject of surely-blocked candidates
        for idx in part:
            y, x = divmod(int(idx), w)
            if blocked[y, x]:
                continue
            if chosen and r2 > 0:
                c = np.asarray(chosen, np.float64)
                if (((c[:, 0] - x) ** 2 + (c[:, 1] - y) ** 2) < r2).any():
                    continue
            chosen.append((x, y))
            if len(chosen) >= k:
                return np.asarray(chosen, np.float32)
            if inner >= 0:
                blocked[max(0, y - inner) : y + inner + 1, max(0, x - inner) : x + inner + 1] = 1
    return np.asarray(chosen, np.float32).reshape(-1, 2)


def pick_grid_points(
    weights: np.ndarray, grid: np.ndarray, k: int, min_spacing: float, rng: np.random.Generator
) -> np.ndarray:
    """Up to ``k`` indices into ``grid`` ((N, 2) ``(x, y)`` points, the tracker's query grid), drawn as
    :func:`sample_drag_points` draws pixels: weighted by ``weights`` at each point (its nearest pixel;
    <= 0 or non-finite: never), at least ``min_spacing`` px apart, in the order drawn. The drag
    handles are then points the tracker already tracks, so its call holds exactly the grid."""
    grid = np.asarray(grid, np.float32).reshape(-1, 2)
    if k <= 0 or len(grid) == 0:
        return np.zeros(0, np.int64)
    h, w = weights.shape
    xi = np.clip(np.rint(grid[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(grid[:, 1]).astype(int), 0, h - 1)
    wt = np.asarray(weights, np.float64)[yi, xi]
    wt = np.where(np.isfinite(wt), wt, 0.0)
    cand = np.flatnonzero(wt > 0)
    if cand.size == 0:
        return np.zeros(0, np.int64)
    order = cand[np.argsort(rng.exponential(size=cand.size) / wt[cand], kind="stable")]
    r2 = float(min_spacing) ** 2
    chosen: list[int] = []
    for i in order:
        p = grid[i]
        if chosen and r2 > 0:
            c = grid[chosen]
            if (((c[:, 0] - p[0]) ** 2 + (c[:, 1] - p[1]) ** 2) < r2).any():
                continue
        chosen.append(int(i))
        if len(chosen) >= k:
            break
    return np.asarray(chosen, np.int64)


def add_matches(
    d_src: np.ndarray, d_tgt: np.ndarray, matches: np.ndarray, k: int, min_spacing: float, min_move: float
) -> tuple[np.ndarray, np.ndarray]:
    """The drags ``(d_src, d_tgt)`` filled up to ``k`` with ``matches`` ((N, 4) ``[x_src, y_src, x_tgt,
    y_tgt]``, longest move first) that move at least ``min_move`` px and whose target is at least
    ``min_spacing`` px from every target already kept."""
    d_src = np.asarray(d_src, np.float32).reshape(-1, 2)
    d_tgt = np.asarray(d_tgt, np.float32).reshape(-1, 2)
    if len(matches) == 0 or len(d_src) >= k:
        return d_src, d_tgt
    m = np.asarray(matches, np.float32).reshape(-1, 4)
    move = np.linalg.norm(m[:, 2:] - m[:, :2], axis=1)
    m = m[move >= min_move][np.argsort(-move[move >= min_move], kind="stable")]
    src, tgt = list(d_src), list(d_tgt)
    for row in m:
        if len(tgt) >= k:
            break
        if tgt and min(float(np.hypot(*(row[2:] - t))) for t in tgt) < min_spacing:
            continue
        src.append(row[:2])
        tgt.append(row[2:])
    return np.asarray(src, np.float32).reshape(-1, 2), np.asarray(tgt, np.float32).reshape(-1, 2)


def flow_agreement(
    flow: np.ndarray, src_pts: np.ndarray, tgt_pts: np.ndarray, tol_px: float, rel: float = 0.05
) -> np.ndarray:
    """(K,) bool: ``|src + flow(src) - tgt| <= tol_px + rel * |tgt - src|`` (bilinear flow).

    A cross-check of the tracker (target -> source) against the flow stage (source -> target):
    a chained tracker that loses an object point near its outline tends to stay on the static
    background, which forward-backward consistency cannot see (both directions agree on
    "static"); the flow then lands the source point far from the target point.
    """
    src = np.asarray(src_pts, np.float32).reshape(-1, 2)
    tgt = np.asarray(tgt_pts, np.float32).reshape(-1, 2)
    if len(src) == 0:
        return np.zeros(0, bool)
    h, w = flow.shape[:2]
    f = sample_field(flow, src)
    tol = tol_px + rel * np.linalg.norm(tgt - src, axis=1)
    return np.linalg.norm(src + f - tgt, axis=1) <= tol


def _components_with(moving: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Union of the 8-connected components of ``moving`` that contain one of ``pts``."""
    out = np.zeros(moving.shape, bool)
    if len(pts) == 0 or not moving.any():
        return out
    n, labels = cv2.connectedComponents(moving.astype(np.uint8), connectivity=8)
    h, w = moving.shape
    xi = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
    ids = np.unique(labels[yi, xi])
    ids = ids[ids > 0]
    if ids.size:
        out = np.isin(labels, ids)
    return out


def drag_mask(
    flow: np.ndarray, mag_tgt: np.ndarray, src_pts: np.ndarray, tgt_pts: np.ndarray, min_flow_px: float, dilate_px: int
) -> np.ndarray:
    """Editable region (H, W) uint8 0/255 for DragDiffusion-style editing.

    The connected moving regions (``|flow| >= min_flow_px`` on the source, the target-side
    magnitude on the target) that contain a handle resp. a target point, plus the points
    themselves, dilated by a disc of radius ``dilate_px``. Both sides are unioned because the
    edit both vacates the handle region and fills the target region. No points: all zero.
    """
    h, w = mag_tgt.shape
    src_pts = np.asarray(src_pts, np.float32).reshape(-1, 2)
    tgt_pts = np.asarray(tgt_pts, np.float32).reshape(-1, 2)
    if len(src_pts) == 0 and len(tgt_pts) == 0:
        return np.zeros((h, w), np.uint8)
    thr = max(float(min_flow_px), 1e-6)
    region = _components_with(_magnitude(flow) >= thr, src_pts) | _components_with(mag_tgt >= thr, tgt_pts)
    mask = region.astype(np.uint8) * 255
    for p in np.concatenate([src_pts, tgt_pts]):
        x, y = int(round(float(p[0]))), int(round(float(p[1])))
        if 0 <= x < w and 0 <= y < h:
            mask[y, x] = 255
    if dilate_px > 0:
        d = int(dilate_px)
        mask = cv2.dilate(mask, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d + 1, 2 * d + 1)))
    return mask


def drag_json(
    src_pts: np.ndarray,
    tgt_pts: np.ndarray,
    image_size: tuple[int, int],
    direction: str = "source_to_target",
    ndigits: int = 2,
) -> dict:
    """The ``drag.json`` dict: ``{"image_size": [W, H], "direction": ..., "points": [...]}``."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    pts = []
    for s, t in zip(np.asarray(src_pts).reshape(-1, 2), np.asarray(tgt_pts).reshape(-1, 2)):
        s_xy = [round(float(s[0]), ndigits), round(float(s[1]), ndigits)]
        t_xy = [round(float(t[0]), ndigits), round(float(t[1]), ndigits)]
        if direction == "target_to_source":
            s_xy, t_xy = t_xy, s_xy
        pts.append({"source": s_xy, "target": t_xy})
    return {"image_size": [int(image_size[0]), int(image_size[1])], "direction": direction, "points": pts}


def drag_points(drag: dict) -> tuple[np.ndarray, np.ndarray]:
    """(handles on the source, targets on the target), whatever the drag.json direction."""
    pts = drag.get("points") or []
    s = np.array([p["source"] for p in pts], np.float32).reshape(-1, 2)
    t = np.array([p["target"] for p in pts], np.float32).reshape(-1, 2)
    return (t, s) if drag.get("direction") == "target_to_source" else (s, t)


def contradicting(
    hs: np.ndarray, ts: np.ndarray, near_px: float, tol_px: float, tear_px: float = 0.0, tear_ratio: float = 2.0
) -> np.ndarray:
    """(N,) bool: drags (handles ``hs``, targets ``ts``) with another drag whose handle is nearer than
    ``near_px`` and which moves differently by more than ``tol_px``: about one handle going to two
    places is not one motion, and nothing says which of the two is right. ``tear_px``: also two
    handles nearer than that whose moves differ by more than ``tol_px`` plus ``tear_ratio`` times
    their distance: what lies between them would tear (a body bends and turns, it does not fly apart;
    a drag from a man's hip onto a woman passing him, 16 px below the drag that took his head along)."""
    hs = np.asarray(hs, np.float32).reshape(-1, 2)
    d = np.asarray(ts, np.float32).reshape(-1, 2) - hs
    sep = np.linalg.norm(hs[:, None] - hs[None], axis=-1)
    diff = np.linalg.norm(d[:, None] - d[None], axis=-1)
    bad = (sep < near_px) & (diff > tol_px)
    if tear_px > 0:
        bad |= (sep < tear_px) & (diff > tol_px + tear_ratio * sep)
    return bad.any(axis=1)


def judge_drag(p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The drag signal's rules (its :attr:`~vid2pair.core.stage.Signal.judge`; ``p``: the pair's
    evidence, see :func:`vid2pair.stages.evidence.judge_warped_edit`). Each drag: handle and target
    on what moves, long enough to see, on texture, and the source patch at the handle agreeing with
    the target patch at the target better than either image in place, by
    ``quality.drag_still_margin`` (what the target shows at the target point was not already
    there); the pixels under each end changed by ``quality.drag_end_min_change``; no other valid
    drag from about the same handle going elsewhere, nor one near it whose move would tear what lies
    between (``quality.drag_tear_reach_px``). Invalid drags are removed."""
    meta, c, R = it.meta, p.c, p.R
    if "drag" not in meta:
        return
    hs, ts = drag_points(meta["drag"])
    n = len(hs)
    ok = np.zeros(n, bool)
    if n:
        length = np.linalg.norm(ts - hs, axis=1)
        ncc = patch_ncc(p.src, hs, p.tgt, ts, radius=5)
        # both ends where the image changed in place (the content left the handle and arrived at the
        # target), not only inside the region around what changed: a point of still background there
        # does not move
        near_c = cv2.dilate(p.C.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ok = (
            in_mask(R, hs)
            & in_mask(R, ts)
            & in_mask(near_c, hs)
            & in_mask(near_c, ts)
            & (length >= p.px("drag_min_len_px"))
            & (ncc >= c.drag_min_ncc)
            & moved_not_still(
                p.src, p.tgt, np.concatenate([hs, ts], axis=1), both_ends=True, margin=c.drag_still_margin
            )
            & in_mask(cv2.dilate(p.tex.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0, hs)
        )
        # the pixels under each end changed (3x3, colour): a handle on pavement that is still pavement
        # in the target, or a target on wall that was wall in the source, claims a still thing moved
        # (the patch rules above pass such ends when a mover's edge is within the 11x11 patch)
        if c.drag_end_min_change > 0:
            ok &= np.minimum(changed_in_place(p.comp, p.tgt, hs), changed_in_place(p.comp, p.tgt, ts)) >= (
                c.drag_end_min_change
            )
        # two valid drags from about one handle to two places: both go (16 px@512 apart, 16 px unlike)
        v = np.flatnonzero(ok)
        ok[v[contradicting(hs[v], ts[v], 16.0 * p.s, 16.0 * p.s, tear_px=p.px("drag_tear_reach_px"))]] = False
        meta["drag"]["points"] = [q for q, k in zip(meta["drag"]["points"], ok) if k]
    sc["drag_total"], sc["drag_valid"] = int(n), int(ok.sum())
    if ok.sum() < c.min_drags:
        sig_fail["drag"] = (
            "drag_too_few_valid",
            f"{int(ok.sum())} of {n} drags sit on moving content, are >= "
            f"{p.px('drag_min_len_px'):.1f} px long and match their patches "
            f"(< {c.min_drags})",
        )


def draw_drag(v: PanelView) -> list[Panel]:
    """The drag signal's QC panels (its :attr:`~vid2pair.core.stage.Signal.draw`): the drags on the
    source and on the target, numbered by colour, the editable region tinted on the handles' side."""
    drag = v.sample.json("drag.json")
    if drag is None:
        return [
            v.missing("drag_src", "drags on source", "drag.json", "drag"),
            v.missing("drag_tgt", "drags on target", "drag.json", "drag"),
        ]
    pts = _points_array(drag)
    pts_d = scale_points(pts, v.sx, v.sy) if len(pts) else pts
    cols = [PALETTE[i % len(PALETTE)] for i in range(len(pts))]
    rev = drag.get("direction") == "target_to_source"
    dmask = v.sample.image("drag_mask")
    out = []
    for name, img, where in (("drag_src", v.src, "source"), ("drag_tgt", v.tgt, "target")):
        if img is None:
            out.append(v.missing(name, f"drags on {where}", f"{where} image", None))
            continue
        base = v.disp(img)
        handle_side = "target" if rev else "source"
        if dmask is not None and where == handle_side:
            base = overlay_mask(base, _resize(dmask, v.width, v.h, nearest=True), (80, 140, 255), 0.3)
        tinted = ", mask tinted" if dmask is not None and where == handle_side else ""
        lab = f"drags on {where} ({len(pts)}{tinted})"
        if rev:
            lab += " [tgt→src]"
        out.append(Panel(name, lab, draw_drag_arrows(base, pts_d, cols) if len(pts) else base))
    return out


# --------------------------------------------------------------------------- the trainer's input


def drag_raster(points: np.ndarray, H: int, W: int, sigma: float) -> np.ndarray:
    """(3, H, W) float32: Gaussian blobs at the handles, at the targets, and the handle -> target
    segments with intensity rising 0.25 -> 1 toward the target (so the pairing and the direction are
    visible to a convolutional encoder). ``points`` (P, 4) ``[xs, ys, xt, yt]`` in pixels.
    Each point / segment is drawn inside its bounding box + 4 sigma only (cheap at 576x1024)."""
    out = np.zeros((3, H, W), np.float32)
    inv = 1.0 / (2 * sigma * sigma)
    r = 4.0 * sigma

    def window(x0, x1, y0, y1):
        c0, c1 = max(0, int(np.floor(min(x0, x1) - r))), min(W, int(np.ceil(max(x0, x1) + r)) + 1)
        r0, r1 = max(0, int(np.floor(min(y0, y1) - r))), min(H, int(np.ceil(max(y0, y1) + r)) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        yy, xx = np.mgrid[r0:r1, c0:c1].astype(np.float32)
        return (slice(r0, r1), slice(c0, c1)), xx, yy

    for xs, ys, xt, yt in np.asarray(points, np.float32).reshape(-1, 4):
        for ch, (x, y) in ((0, (xs, ys)), (1, (xt, yt))):
            w = window(x, x, y, y)
            if w is not None:
                sl, xx, yy = w
                np.maximum(out[ch][sl], np.exp(-((xx - x) ** 2 + (yy - y) ** 2) * inv), out=out[ch][sl])
        w = window(xs, xt, ys, yt)
        if w is None:
            continue
        sl, xx, yy = w
        dx, dy = xt - xs, yt - ys
        L2 = dx * dx + dy * dy
        t = np.clip(((xx - xs) * dx + (yy - ys) * dy) / L2, 0, 1) if L2 > 1e-6 else np.zeros_like(xx)
        d2 = (xx - xs - t * dx) ** 2 + (yy - ys - t * dy) ** 2
        np.maximum(out[2][sl], (0.25 + 0.75 * t) * np.exp(-d2 * inv), out=out[2][sl])
    return out


def decode_drag(r) -> dict:
    """The drag task's conditioning (:class:`vid2pair.core.stage.TrainInput`): ``signal`` the
    :func:`drag_raster` of the points, ``drag_points`` (P, 4) ``[xs, ys, xt, yt]`` at the model
    resolution (P = ``data.drag_max_points``, zero-padded) and ``drag_valid`` (P,). Training draws a
    random number of them (``data.drag_min_points`` .. max) per sample and epoch; evaluation takes
    the first ones. Points that leave the frame after the crop are dropped."""
    H, W = r.size
    spec = r.spec
    drag = r.json("drag.json")
    # [xs, ys, xt, yt]: handle on the source image, where it goes on the target; drag.json
    # with direction target_to_source lists them the other way round
    flip = drag.get("direction", "source_to_target") == "target_to_source"
    pts = np.array(
        [[*p["target"], *p["source"]] if flip else [*p["source"], *p["target"]] for p in drag.get("points", [])],
        np.float64,
    )
    pts = pts.reshape(-1, 4)
    if len(pts):
        pts = np.concatenate([r.points(pts[:, :2]), r.points(pts[:, 2:])], axis=1)
        inside = ((pts[:, [0, 2]] >= -0.5) & (pts[:, [0, 2]] <= W - 0.5)).all(1) & (
            (pts[:, [1, 3]] >= -0.5) & (pts[:, [1, 3]] <= H - 0.5)
        ).all(1)
        pts = pts[inside]
    P = spec.drag_max_points
    if spec.random_drag and len(pts):
        rng = r.rng("drag")
        n = rng.randint(min(spec.drag_min_points, len(pts)), min(P, len(pts)))
        pts = pts[sorted(rng.sample(range(len(pts)), n))]
    else:
        pts = pts[:P]
    dp = np.zeros((P, 4), np.float32)
    dp[: len(pts)] = pts
    return {
        "signal": drag_raster(pts, H, W, spec.drag_sigma_px),
        "drag_points": dp,
        "drag_valid": np.arange(P) < len(pts),
    }


def display_drag(signal, src):
    """The drag raster over a dimmed source: handles red, targets green, paths blue."""
    return (0.35 * ((src.float() + 1) / 2) + signal[:, :3]).clamp(0, 1)


DRAG_INPUT = TrainInput(channels=3, decode=decode_drag, display=display_drag, extras=("drag_points", "drag_valid"))


# --------------------------------------------------------------------------- what QC measures

#: the scores :func:`judge_drag` writes
DRAG_SCORES = (Score("drag_total", "int64"), Score("drag_valid", "int64"))


def _measure_drag(meta: dict, read) -> dict:
    """drag_n, drag_len_mean, drag_len_max, and drag_lens (every |target - source|, px)."""
    drag = read("drag.json")
    drag = meta.get("drag") if drag is None else drag
    lens = [
        float(math.hypot(p["target"][0] - p["source"][0], p["target"][1] - p["source"][1]))
        for p in (drag or {}).get("points", [])
    ]
    return {
        "drag_n": len(lens) if drag is not None else None,
        "drag_len_mean": float(np.mean(lens)) if lens else None,
        "drag_len_max": float(np.max(lens)) if lens else None,
        "drag_lens": lens,
    }


def _caption_drag(v: dict) -> Optional[str]:
    if v["drag_n"] is None:
        return None
    return f"{v['drag_n']} drags" + (f" (max {v['drag_len_max']:.0f} px)" if v["drag_len_max"] else "")


def _plot_drag(view) -> None:
    view.hist([("drag points", view.col("drag_lens"))], "drag length", "|target − source| (px)")


DRAG_METRICS = Metrics(("drag_n", "drag_len_mean", "drag_len_max"), _measure_drag, _caption_drag, _plot_drag)
