"""rematch: objects that a dense flow lost, matched directly between source and target.

A chained flow follows an object frame to frame; when the object blurs, is pushed fast or is
hidden for a moment in between (a coin flicked by a pen, a dropped ball), the chain loses it, and
so does a direct DIS call over a move of tens of pixels. Yet the object looks alike in the source
and in the target. With a static camera what changed between the two frames is known on pixels,
so each changed blob of the source can be looked up in the target directly:

1. ``C`` = pixels where the blurred source and target differ; its pieces (closed, holes filled)
   are the candidate objects, where they were (a piece of the source) or where they arrived (a
   piece of the target).
2. A piece's source content (masked to the piece) is template-matched over the target
   (normalised cross-correlation); from that translation an affine map is refined by ECC
   (the object may turn a little or grow as it comes closer), and the piece's pixels must
   correlate with the target under it at least ``min_ncc``.
3. The object is the part of the piece whose mapped pixels land on changed pixels (the object
   arrived somewhere that changed; a piece may also hold plain background where something else
   arrives); it must be at least 40 % of the piece, correlate as well, stay inside the frame, keep
   about its size and move at least ``min_move_px``.
4. Only where the dense flow disagrees: when 90 % of the piece already carries that
   move, forward-backward consistent, the flow had it and stays.

A re-matched piece ``A`` mapped by ``M`` gets ``F(x) = M x - x`` on ``A`` and the inverse map on
``M(A)`` for the backward flow; with a static camera the background it uncovers (``A`` minus
``M(A)``, in the target) and the background it covers (``M(A)`` minus ``A``, in the source) does
not move: 0 there. Pieces that deform, turn a lot or leave the frame do not correlate and keep
their flow (the quality stage then judges them).

Pure: arrays in, arrays and records out.
"""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np

from vid2pair.ops.image import to_gray
from vid2pair.stages.evidence import changed_mask, fb_consistent, object_region

__all__ = ["rematch_objects", "split_segments", "COVERED"]

#: the frames between source and target (both counted) that make a background plate (their median)
MIN_PLATE_FRAMES = 5

#: the value of ``pieces`` on background that a re-matched object covers in the target
COVERED = 255


def _gray(img: np.ndarray) -> np.ndarray:
    return (img if img.ndim == 2 else to_gray(img)).astype(np.float32)


def _match(
    m: np.ndarray,
    box: tuple,
    a: np.ndarray,
    b: np.ndarray,
    min_std: float,
    area: tuple,
    angle: float = 0.0,
    fast: bool = False,
) -> Optional[tuple[np.ndarray, float]]:
    """The piece (mask ``m`` in ``box``) as it looks in ``a``, turned by ``angle`` degrees about its
    box's centre, found in ``b`` inside ``area`` (x0, y0, x1, y1: where things changed, with a
    margin) by masked normalised cross-correlation: (the 2x3 map, frame coordinates of ``a`` ->
    ``b``, a turn and a translation, the NCC), or None when it is flat or as large as the search area."""
    x, y, bw, bh = box
    x0, y0, x1, y1 = area
    t, tm = a[y : y + bh, x : x + bw], m.astype(np.uint8)
    if float(t[m > 0].std()) < min_std:
        return None
    rot = np.float64([[1, 0, -x], [0, 1, -y]])  # frame -> template coordinates
    if angle:
        c = ((bw - 1) / 2.0, (bh - 1) / 2.0)
        r = cv2.getRotationMatrix2D(c, float(angle), 1.0)
        cos, sin = abs(r[0, 0]), abs(r[0, 1])
        tw, th = int(np.ceil(bw * cos + bh * sin)), int(np.ceil(bw * sin + bh * cos))
        r[:, 2] += ((tw - 1) / 2.0 - c[0], (th - 1) / 2.0 - c[1])  # centred in the larger box
        t = cv2.warpAffine(np.ascontiguousarray(t), r, (tw, th), flags=cv2.INTER_LINEAR)
        tm = cv2.warpAffine(tm, r, (tw, th), flags=cv2.INTER_NEAREST)
        rot = np.vstack([r, [0, 0, 1]])[:2] @ np.vstack([rot, [0, 0, 1]])
    th, tw = t.shape
    if tw >= x1 - x0 - 1 or th >= y1 - y0 - 1 or not tm.any():
        return None
    fast = fast or bool(angle)
    if fast:  # a candidate only (refined and checked after): the fast unmasked correlation, the
        # template's background filled with its object's mean (it then adds nothing to the sum)
        t = np.where(tm > 0, t, float(t[tm > 0].mean())).astype(np.float32)
    res = cv2.matchTemplate(b[y0:y1, x0:x1], t, cv2.TM_CCOEFF_NORMED, mask=None if fast else tm)
    res = np.nan_to_num(res, nan=-1.0, posinf=-1.0, neginf=-1.0)
    py, px = np.unravel_index(int(np.argmax(res)), res.shape)
    peak = float(res[py, px])
    rot[:, 2] += (x0 + px, y0 + py)  # template coordinates -> b
    return rot.astype(np.float32), peak


def _refine(
    box: tuple, init: np.ndarray, a: np.ndarray, b: np.ndarray, piece: np.ndarray
) -> Optional[tuple[np.ndarray, float]]:
    """The affine map (2x3, frame coordinates of ``a`` -> ``b``) that carries the piece onto ``b``,
    refined by ECC from ``init`` (the same kind of map) over the piece's box (with a margin), and
    the NCC of the piece's pixels under it; None when ECC fails or the map leaves the frame."""
    x, y, bw, bh = box
    h, w = a.shape
    pad = max(3, int(0.15 * max(bw, bh)))
    x0, y0, x1, y1 = max(0, x - pad), max(0, y - pad), min(w, x + bw + pad), min(h, y + bh + pad)
    t = np.ascontiguousarray(a[y0:y1, x0:x1])
    warp = init.astype(np.float64)
    warp[:, 2] += warp[:, :2] @ np.array([x0, y0], np.float64)  # template coordinates -> b
    try:
        _, warp = cv2.findTransformECC(
            t,
            b,
            warp.astype(np.float32),
            cv2.MOTION_AFFINE,
            (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-5),
            None,
            5,
        )
    except cv2.error:
        return None
    aff = warp.astype(np.float64)
    aff[:, 2] -= aff[:, :2] @ np.array([x0, y0], np.float64)  # frame coordinates of a -> b
    aff = aff.astype(np.float32)
    ncc = _ncc_under(aff, a, b, piece)
    return None if ncc is None else (aff, ncc)


def _fit(
    piece: np.ndarray,
    box: tuple,
    a: np.ndarray,
    b: np.ndarray,
    min_std: float,
    area: tuple,
    min_ncc: float,
    turns: int,
    fast: bool = False,
) -> Optional[tuple[np.ndarray, float]]:
    """The piece's map onto ``b`` (:func:`_match`, then :func:`_refine`) with the best NCC of at
    least ``min_ncc``: as it stands first, then (``turns`` > 1) turned by each of ``turns`` equal
    steps of a full turn, best-correlated first (a mouse or a beetle that turned round as it went);
    None when none holds."""
    x, y, bw, bh = box
    m = piece[y : y + bh, x : x + bw]
    tries = [_match(m, box, a, b, min_std, area, fast=fast)]
    if turns > 1:  # a turned box is larger: the search area grows by half its side
        r, (h, w) = (max(bw, bh) + 1) // 2, b.shape
        big = (max(0, area[0] - r), max(0, area[1] - r), min(w, area[2] + r), min(h, area[3] + r))
        turned = [_match(m, box, a, b, min_std, big, 360.0 * k / turns) for k in range(1, turns)]
        tries += sorted((f for f in turned if f is not None), key=lambda f: -f[1])[:2]
    for found in tries:
        if found is None or found[1] < 0.5 * min_ncc:  # nothing like it in the target
            continue
        fit = _refine(box, found[0], a, b, piece)
        if fit is not None and fit[1] >= min_ncc:
            return fit
    return None


def _seen_under(aff: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``b`` at the pixels of ``a`` mapped by ``aff`` (-1 off the frame)."""
    h, w = a.shape
    return cv2.warpAffine(b, aff, (w, h), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderValue=-1.0)


def _ncc_under(aff: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> Optional[float]:
    """NCC of ``a`` on ``mask`` and ``b`` at the same pixels mapped by ``aff`` (None: off the frame)."""
    seen = _seen_under(aff, a, b)
    p, q = a[mask], seen[mask]
    if (q < 0).any() or len(p) < 10:
        return None
    p, q = p - p.mean(), q - q.mean()
    return float((p * q).mean() / max(float(p.std() * q.std()), 1e-6))


def _diff_under(aff: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    """Mean absolute difference of ``a`` on ``mask`` and ``b`` at the same pixels mapped by ``aff``
    (pixels mapped off the frame left out)."""
    seen = _seen_under(aff, a, b)
    on = mask & (seen >= 0)
    return float(np.abs(a[on] - seen[on]).mean()) if on.any() else float("inf")


def _opened(m: np.ndarray) -> np.ndarray:
    """``m`` opened by a 3x3 square: no specks, no one-pixel bridges."""
    return cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0


def rematch_objects(
    src: np.ndarray,
    tgt: np.ndarray,
    flow: np.ndarray,
    bwd: Optional[np.ndarray],
    *,
    thresh: float = 15.0,
    sigma: float = 1.5,
    close_px: int = 3,
    min_ncc: float = 0.8,
    min_move_px: float = 2.0,
    min_area_frac: float = 0.0005,
    max_area_frac: float = 0.2,
    min_std: float = 6.0,
    turns: int = 1,
    frames: Optional[np.ndarray] = None,
    max_diff: Optional[float] = None,
) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, np.ndarray, list[dict]]:
    """The flows with the pieces the dense flow lost re-matched (module docstring), the target-side
    mask of where they arrived, the source-side pieces (uint8, piece i is i + 1, the background an
    object covers in the target :data:`COVERED`, 0 elsewhere) and a
    record per re-matched piece (its box on the source, its mean move, the NCC, its area in
    pixels, its affine map). ``flow`` / ``bwd`` are not modified in place.

    ``frames`` (N, H, W, 3), the frames from the source to the target: with at least
    :data:`MIN_PLATE_FRAMES` of them, their median is the background plate, and a piece that is not
    found as it stands (an object that moved less than its own length leaves one piece, where it
    was and where it arrived) is looked for again as the part of it where the source differs from
    the plate: the object as it was.

    ``max_diff``: the mean absolute grey difference (0-255) a re-matched object may show against the
    target under its map (None: not checked). NCC ignores gain and offset, so a small blob matches
    a look-alike shape far off whatever its colour (a red ball onto a white coat 168 px away: NCC
    0.81, mean difference 34; right re-matches of coins, mice and hands differ by 7-18)."""
    h, w = src.shape[:2]
    flow = flow.copy()
    bwd = None if bwd is None else bwd.copy()
    done = np.zeros((h, w), bool)
    pieces_src = np.zeros((h, w), np.uint8)
    records: list[dict] = []
    core = object_region(changed_mask(src, tgt, thresh, sigma), close_px=close_px, dilate_px=0)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(core.astype(np.uint8), connectivity=8)
    plate = None
    if frames is not None and len(frames) >= MIN_PLATE_FRAMES:
        plate = _gray(np.median(np.asarray(frames), axis=0).astype(np.uint8))
    if n <= 1 or (n == 2 and plate is None):  # one piece cannot have moved onto another
        return flow, bwd, done, pieces_src, records
    gs, gt = _gray(src), _gray(tgt)
    if plate is not None:  # where the source / the target show something in front of the background
        # (changed against the plate)
        off_s, off_t = changed_mask(gs, plate, thresh, sigma), changed_mask(gt, plate, thresh, sigma)
    area = stats[:, cv2.CC_STAT_AREA]
    pieces = [int(k) for k in np.argsort(-area) if k > 0 and min_area_frac * h * w <= area[k] <= max_area_frac * h * w]
    valid = fb_consistent(flow, bwd) if bwd is not None else np.ones((h, w), bool)
    cy, cx = np.nonzero(core)  # an object arrives on changed pixels: search only around them
    pad = 8
    area_box = (
        max(0, int(cx.min()) - pad),
        max(0, int(cy.min()) - pad),
        min(w, int(cx.max()) + 1 + pad),
        min(h, int(cy.max()) + 1 + pad),
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    claimed = np.zeros((h, w), bool)
    for k in pieces:
        box = tuple(int(v) for v in stats[k, :4])
        x, y, bw, bh = box
        piece = lab == k
        if (piece & claimed).any():
            continue
        fit = _fit(piece, box, gs, gt, min_std, area_box, min_ncc, turns) if n > 2 else None
        if fit is None and plate is not None:  # the object as it was: where the source is not the plate
            part = _opened(piece & off_s)
            if min_area_frac * h * w <= part.sum() <= 0.9 * piece.sum():
                part_box = cv2.boundingRect(part.astype(np.uint8))
                fit = _fit(part, part_box, gs, gt, min_std, area_box, min_ncc, turns, fast=True)
                piece = part if fit is not None else piece
        if fit is None:
            continue
        aff = fit[0]
        fx = aff[0, 0] * xx + aff[0, 1] * yy + aff[0, 2] - xx  # the piece's move, per pixel
        fy = aff[1, 0] * xx + aff[1, 1] * yy + aff[1, 2] - yy
        # the object is the part of the piece that lands on what changed: a piece may also hold
        # plain background where something else arrives (closed onto the object), which a plain
        # template cannot tell from the background next to where the object arrived
        lx = np.clip(np.rint(xx + fx).astype(np.int32), 0, w - 1)
        ly = np.clip(np.rint(yy + fy).astype(np.int32), 0, h - 1)
        obj = piece & core[ly, lx]
        if obj.sum() < 0.4 * piece.sum():
            continue
        ncc = _ncc_under(aff, gs, gt, obj) if not np.array_equal(obj, piece) else fit[1]
        if ncc is None or ncc < min_ncc:
            continue
        if max_diff is not None and _diff_under(aff, gs, gt, obj) > max_diff:  # a look-alike shape
            continue
        piece = obj
        move = np.array([fx[piece].mean(), fy[piece].mean()], np.float32)
        if float(np.hypot(*move)) < min_move_px:
            continue
        dest = cv2.warpAffine(piece.astype(np.uint8), aff, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
        if not 0.5 * piece.sum() <= dest.sum() <= 2.0 * piece.sum():  # left the frame, or blown up
            continue
        if float(core[dest].mean()) < 0.6:  # did not arrive on something that changed
            continue
        tol = 1.5 + 0.1 * float(np.hypot(*move))
        had = (np.hypot(flow[..., 0] - fx, flow[..., 1] - fy) < tol) & valid
        if float(had[piece].mean()) >= 0.9:  # the dense flow had it already
            continue
        # with a background plate, what moves is what stands in front of it: the object with its
        # soft outline (the 2 px round the change), not the background the piece holds round it
        plated = plate is not None and float(off_s[piece].mean()) >= 0.5
        if plated:
            grown = cv2.dilate(piece.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool) & ~claimed
            around = grown | (np.isin(lab, np.unique(lab[grown])) & (lab > 0))  # the blobs it left and reached
            piece = object_region(grown & off_s, close_px=1, dilate_px=0) & grown  # (no holes where it lingered)
            dest = cv2.warpAffine(piece.astype(np.uint8), aff, (w, h), flags=cv2.INTER_NEAREST, borderValue=0) > 0
            around |= dest | (np.isin(lab, np.unique(lab[dest])) & (lab > 0))
            flow[around & ~piece & ~off_s] = 0.0  # the background does not move (static camera)
        flow[dest & ~piece] = 0.0  # background the object covers does not move (static camera)
        flow[piece] = np.stack([fx, fy], -1)[piece]
        if bwd is not None:
            inv = cv2.invertAffineTransform(aff)
            bx = inv[0, 0] * xx + inv[0, 1] * yy + inv[0, 2] - xx
            by = inv[1, 0] * xx + inv[1, 1] * yy + inv[1, 2] - yy
            bwd[piece & ~dest] = 0.0  # background it uncovers
            bwd[dest] = np.stack([bx, by], -1)[dest]
            if plated:  # where the target shows the background, or the object's soft outline, it came from
                # the background there (an honest hole is left only where more of the object shows)
                edge = cv2.dilate(dest.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)
                bwd[around & ~dest & (~off_t | edge)] = 0.0
        done |= dest
        claimed |= piece | dest
        pieces_src[dest & ~piece] = COVERED  # background the object covers in the target
        if len(records) < COVERED - 1:
            pieces_src[piece] = len(records) + 1
        records.append(
            {
                "box": list(box),
                "move": [round(float(move[0]), 2), round(float(move[1]), 2)],
                "ncc": round(ncc, 3),
                "area": int(piece.sum()),
                "affine": [[round(float(v), 5) for v in row] for row in aff],
            }
        )
    return flow, bwd, done, pieces_src, records


def split_segments(labels: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """``labels`` (a segmentation, -1 = none) with each re-matched piece (``pieces`` as
    :func:`rematch_objects` returns them) made one segment of its own, renumbered 0..n-1: no segment
    straddles an object's outline, so a segment's single transform never mixes the object's move
    with the still background around it, and the object is not cut into parts with seams between
    them; the background an object covers in the target is no segment (-1: it is drawn only where
    nothing else lands)."""
    pieces = np.asarray(pieces)
    if not pieces.any():
        return labels
    lab = np.asarray(labels).astype(np.int64)
    obj = (pieces > 0) & (pieces != COVERED)
    key = np.where(lab >= 0, (lab + 1) * 256, -1)
    key = np.where(obj, pieces.astype(np.int64), key)  # each object one segment: one transform, no seams
    key = np.where(pieces == COVERED, -1, key)
    _, inv = np.unique(key, return_inverse=True)
    out = inv.reshape(lab.shape).astype(np.int64) - (1 if (key < 0).any() else 0)
    return out.astype(np.int32)
