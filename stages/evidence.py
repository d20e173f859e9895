"""What a pair's own pixels say: the changed region, forward-backward consistency, patch agreement.

These are the measurements every signal is judged by (:mod:`vid2pair.stages.quality`) and that
clean the motion estimates before the signals are made (:class:`~vid2pair.stages.flow.FlowStage`),
whichever flow, tracker or segmenter produced them:

* :func:`changed_mask`: pixels where the blurred source and target differ by more than a
  threshold (grey levels). With a static camera nothing outside it moves.
* :func:`object_region`: the changed mask closed and with its enclosed holes filled, so the
  untextured interior of a moving object (which does not change) counts as moving.
* :func:`fb_consistent`: ``|F(x) + B(x + F(x))| < abs_px + rel |F(x)|``, per pixel of F's grid.
* :func:`patch_ncc`: normalised cross-correlation of grey patches at two point sets.
* :func:`solid_change`: what of a changed mask survives an opening (a visible change, not the
  slivers along a still subject's outline, swaying leaves or sensor noise).
* :func:`sparse_matches`: SIFT correspondences between the two images on a region, mutual, past
  Lowe's ratio test and agreeing in their patches: correspondences that survive moves dense flow
  loses (``../shared/notes/real-footage-probes.md``).
"""

from __future__ import annotations

from functools import partial

import cv2
import numpy as np

from vid2pair.core.preview import edit_image
from vid2pair.core.spec import frame_scale
from vid2pair.core.stage import Score, Signal
from vid2pair.ops.draw import draw_warped_edit, warped_edit_metrics
from vid2pair.ops.flow_math import warp_image
from vid2pair.ops.image import to_gray
from vid2pair.ops.train_input import edit_with_holes

__all__ = [
    "changed_mask",
    "object_region",
    "textured",
    "moving_support",
    "still_support",
    "fb_consistent",
    "patch_ncc",
    "sample_field",
    "masked_psnr",
    "solid_change",
    "sparse_matches",
    "coherent_matches",
    "klt_verify",
    "klt_tracks",
]


def _blur(img: np.ndarray, sigma: float) -> np.ndarray:
    f = img.astype(np.float32)
    return cv2.GaussianBlur(f, (0, 0), sigma) if sigma > 0 else f


def changed_mask(src: np.ndarray, tgt: np.ndarray, thresh: float = 15.0, sigma: float = 1.5) -> np.ndarray:
    """(H, W) bool: the largest per-channel difference of the blurred images exceeds ``thresh``."""
    d = np.abs(_blur(src, sigma) - _blur(tgt, sigma))
    if d.ndim == 3:
        d = d.max(axis=2)
    return d > thresh


def object_region(changed: np.ndarray, close_px: int = 3, dilate_px: int = 2) -> np.ndarray:
    """The changed mask closed by a ``close_px`` disc, its enclosed holes filled, dilated by ``dilate_px``."""
    m = changed.astype(np.uint8)
    if close_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * close_px + 1, 2 * close_px + 1))
        m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k)
    h, w = m.shape
    flood = np.pad(m, 1).copy()  # fill holes: flood the background from the border
    cv2.floodFill(flood, np.zeros((h + 4, w + 4), np.uint8), (0, 0), 2)
    m = np.where(flood[1:-1, 1:-1] == 2, 0, 1).astype(np.uint8)
    if dilate_px > 0:
        k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * dilate_px + 1, 2 * dilate_px + 1))
        m = cv2.dilate(m, k)
    return m > 0


def gradient(img: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """(H, W) grey gradient magnitude, grey levels / px, after a ``sigma`` blur (3x3 Sobel / 8)."""
    g = _blur(to_gray(img), sigma)
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)) / 8.0


def new_edges(src: np.ndarray, tgt: np.ndarray, min_gain: float = 6.0, sigma: float = 1.0) -> np.ndarray:
    """(H, W) bool: where the target has an edge the source does not (:func:`gradient` at least
    ``min_gain`` levels stronger in the target). A moved thing's outline as it arrived is one; where
    it used to stand, the source has the outline and the target not, and still texture has its edges
    in both."""
    return (gradient(tgt, sigma) - gradient(src, sigma)) > min_gain


def textured(img: np.ndarray, min_grad: float = 4.0, sigma: float = 1.0) -> np.ndarray:
    """(H, W) bool: where the blurred grey image has a gradient above ``min_grad`` grey levels / px,
    i.e. where motion is observable (a flow on a plain wall or desk cannot be checked, nor seen)."""
    return gradient(img, sigma) > min_grad


def moving_support(
    src: np.ndarray, tgt: np.ndarray, thresh: float = 15.0, sigma: float = 1.5, close_px: int = 3, band_px: int = 4
) -> np.ndarray:
    """Where a static camera's flow may be non-zero: the changed region (closed, holes filled) plus a
    ``band_px`` band around it where the source is textured. Flat, unchanged pixels next to a moving
    object are where dense flow leaks ("blobby" flow on a plain desk); they do not move."""
    core = object_region(changed_mask(src, tgt, thresh, sigma), close_px=close_px, dilate_px=0)
    band = object_region(core, close_px=0, dilate_px=band_px) & ~core
    return core | (band & textured(src))


def still_support(src: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """:func:`moving_support` at the settings the flow stage's ``static_suppress`` and the track
    stage's ``hold_still`` share (15 grey levels; blur, closing and band scaled with the frame's
    short side / 512), the source's exposure first fitted to the target's
    (:func:`compensate_exposure`): ``True`` where a fixed camera's pixels may move. A still cabinet
    whose auto-exposure dropped is still (``real2/makeup_hand_face`` 103->161: the tracks moved
    more than 3 px on the still cabinet fall from 189 without the fit to 20 with it)."""
    s = frame_scale(src.shape)
    src, _ = compensate_exposure(src, tgt, refits=2)
    return moving_support(src, tgt, 15.0, 1.5 * s, close_px=max(1, round(6 * s)), band_px=max(2, round(8 * s)))


def compensate_exposure(
    src: np.ndarray, tgt: np.ndarray, step: int = 4, refits: int = 0, inlier_levels: float = 15.0
) -> tuple[np.ndarray, float]:
    """``src`` with a per-channel gain and offset fitted to ``tgt`` (least squares on every ``step``-th
    pixel; gains kept in [0.5, 2]) when that brings the two closer: an auto-exposure drift or a
    lighting change is then not counted as change. ``refits``: fit again that many times on the
    pixels the last fit brought within ``inlier_levels`` of the target (the still background), so
    a hand filling half the frame does not bend the fit. Returns (the image, how much of the mean
    absolute difference the fit removed, 0..1)."""
    if src.ndim == 2:  # one grey channel
        comp, gain = compensate_exposure(src[..., None], tgt[..., None], step, refits, inlier_levels)
        return (src if gain <= 0.1 else comp[..., 0]), gain
    a = src[::step, ::step].reshape(-1, src.shape[-1]).astype(np.float32)
    b = tgt[::step, ::step].reshape(-1, tgt.shape[-1]).astype(np.float32)
    use = np.ones(len(a), bool)
    for it in range(refits + 1):
        gains = []
        for ch in range(src.shape[-1]):
            x, y = a[use, ch], b[use, ch]
            vx = float(x.var()) if len(x) else 0.0
            g = float(np.clip(((x - x.mean()) * (y - y.mean())).mean() / vx, 0.5, 2.0)) if vx > 1e-6 else 1.0
            gains.append((g, float(y.mean()) - g * float(x.mean()) if len(x) else 0.0))
        fit = a * np.float32([g for g, _ in gains]) + np.float32([o for _, o in gains])
        inl = np.abs(fit - b).max(axis=1) <= inlier_levels
        if it < refits and inl.sum() >= 0.1 * len(a):
            use = inl
    out = np.empty(src.shape, np.float32)
    for ch, (g, o) in enumerate(gains):
        out[..., ch] = g * src[..., ch] + o
    comp = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    before = float(np.abs(a - b).mean())
    after = float(np.abs(comp[::step, ::step].reshape(-1, src.shape[-1]).astype(np.float32) - b).mean())
    gain = (before - after) / before if before > 1e-6 else 0.0
    return (comp, round(gain, 4)) if gain > 0.1 else (src, round(max(gain, 0.0), 4))


def sample_field(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) of an (H, W, C) float field at (N, 2) points (replicated border)."""
    pts = np.asarray(pts, np.float32).reshape(-1, 2)
    f = np.ascontiguousarray(field, np.float32)
    if f.ndim == 2:
        f = f[..., None]
    out = []
    for s in range(0, len(pts), 16384):  # cv2.remap maps stay below 32767 per dimension
        p = pts[s : s + 16384]
        v = cv2.remap(
            f,
            np.ascontiguousarray(p[:, :1]),
            np.ascontiguousarray(p[:, 1:]),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        out.append(v.reshape(len(p), -1))
    return np.concatenate(out) if out else np.zeros((0, f.shape[2]), np.float32)


def fb_consistent(fwd: np.ndarray, bwd: np.ndarray, abs_px: float = 1.0, rel: float = 0.05) -> np.ndarray:
    """(H, W) bool on ``fwd``'s grid: the point ``x + F(x)`` lands inside the frame and the backward
    flow there brings it back within ``abs_px + rel |F(x)|``."""
    h, w = fwd.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    tx, ty = xs + fwd[..., 0], ys + fwd[..., 1]
    b = cv2.remap(np.ascontiguousarray(bwd, np.float32), tx, ty, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    err = np.hypot(fwd[..., 0] + b[..., 0], fwd[..., 1] + b[..., 1])
    inside = (tx >= -0.5) & (tx <= w - 0.5) & (ty >= -0.5) & (ty <= h - 0.5)
    return inside & (err < abs_px + rel * np.hypot(fwd[..., 0], fwd[..., 1])) & np.isfinite(err)


def _patches(img: np.ndarray, pts: np.ndarray, radius: int) -> np.ndarray:
    """(N, (2r+1)^2) grey patches of ``img`` around ``pts`` (N, 2) x, y, sampled bilinearly."""
    offs = np.stack(np.meshgrid(np.arange(-radius, radius + 1), np.arange(-radius, radius + 1)), -1)
    offs = offs.reshape(-1, 2).astype(np.float32)
    pts = np.asarray(pts, np.float32).reshape(-1, 2)
    g = to_gray(img)
    return sample_field(g.astype(np.float32), (pts[:, None, :] + offs[None]).reshape(-1, 2)).reshape(len(pts), -1)


def plain_patches(img: np.ndarray, pts: np.ndarray, radius: int = 5, min_std: float = 4.0) -> np.ndarray:
    """(N,) bool: the (2r+1)^2 grey patch around each point has a std under ``min_std`` grey levels
    (plain: a wall, a desk, a soft shadow; the same bar as :func:`patch_ncc`'s)."""
    if len(np.asarray(pts).reshape(-1, 2)) == 0:
        return np.zeros(0, bool)
    return _patches(img, pts, radius).std(axis=1) < min_std


def patch_ncc(
    img_a: np.ndarray, pts_a: np.ndarray, img_b: np.ndarray, pts_b: np.ndarray, radius: int = 3, min_std: float = 4.0
) -> np.ndarray:
    """(N,) normalised cross-correlation of (2r+1)^2 grey patches around ``pts_a`` in ``img_a`` and
    ``pts_b`` in ``img_b`` (bilinear). Flat patches (std < ``min_std`` grey levels) give 1 (no
    evidence either way: compressed video of a plain wall or desk has a noise std of 1-3 grey levels)."""
    if len(np.asarray(pts_a).reshape(-1, 2)) == 0:
        return np.zeros(0, np.float32)
    a, b = _patches(img_a, pts_a, radius), _patches(img_b, pts_b, radius)
    a -= a.mean(axis=1, keepdims=True)
    b -= b.mean(axis=1, keepdims=True)
    sa, sb = np.sqrt((a * a).mean(axis=1)), np.sqrt((b * b).mean(axis=1))
    ncc = (a * b).mean(axis=1) / np.maximum(sa * sb, 1e-6)
    return np.where((sa < min_std) | (sb < min_std), 1.0, ncc).astype(np.float32)


def patch_diff(
    img_a: np.ndarray, pts_a: np.ndarray, img_b: np.ndarray, pts_b: np.ndarray, radius: int = 5
) -> np.ndarray:
    """(N,) mean absolute grey difference of the (2r+1)^2 patches around ``pts_a`` in ``img_a`` and
    ``pts_b`` in ``img_b`` (bilinear). Against :func:`patch_ncc` it sees plain patches too: the
    plain floor that a moving foot uncovers differs from the foot."""
    if len(np.asarray(pts_a).reshape(-1, 2)) == 0:
        return np.zeros(0, np.float32)
    return np.abs(_patches(img_a, pts_a, radius) - _patches(img_b, pts_b, radius)).mean(axis=1).astype(np.float32)


def changed_in_place(a: np.ndarray, b: np.ndarray, pts: np.ndarray, radius: int = 1) -> np.ndarray:
    """(N,) mean absolute colour difference of ``a`` and ``b`` over the ``(2 radius + 1)^2`` square
    at each of ``pts`` (x, y; rounded, clipped to the frame), both images at the same place: how
    much the pixels there changed between the two. A point of still pavement or wall reads a few
    grey levels (noise); a point that something left or reached reads tens. Unlike a grey patch
    difference it sees a red jacket pass over sand of the same brightness."""
    p = np.asarray(pts, np.float32).reshape(-1, 2)
    if not len(p):
        return np.zeros(0, np.float32)
    d = np.abs(a.astype(np.float32) - b.astype(np.float32))
    d = d.mean(-1) if d.ndim == 3 else d
    d = cv2.boxFilter(d, -1, (2 * radius + 1, 2 * radius + 1), borderType=cv2.BORDER_REPLICATE)
    h, w = d.shape
    xi = np.clip(np.rint(p[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(p[:, 1]).astype(int), 0, h - 1)
    return d[yi, xi].astype(np.float32)


def moved_not_still(
    src: np.ndarray,
    tgt: np.ndarray,
    matches: np.ndarray,
    radius: int = 5,
    both_ends: bool = False,
    margin: float = 1.0,
) -> np.ndarray:
    """(N,) bool for (N, 4) ``[x_src, y_src, x_tgt, y_tgt]``: the target's patch at the match's target
    point is closer to the source's patch than the target's patch at the source point itself (the
    content moved there rather than staying put). A Lucas-Kanade track that slid along a moving
    outline from the still background behind it, or a tracker point that lost its object, fails.

    ``both_ends``: the moved match must also beat the source's own patch at the target point (the
    content found at the target was not already there): a point of plain wall or table just beside
    a moving bottle, carried along with it, matches its source as well moved as in place at the
    handle's end, but the wall at its target end was there all along.

    ``margin``: the moved difference must be under this times the in-place one(s): a clear win."""
    m = np.asarray(matches, np.float32).reshape(-1, 4)
    if not len(m):
        return np.zeros(0, bool)
    moved = patch_diff(src, m[:, :2], tgt, m[:, 2:], radius)
    ok = moved < margin * patch_diff(src, m[:, :2], tgt, m[:, :2], radius)
    if both_ends:
        ok &= moved < margin * patch_diff(src, m[:, 2:], tgt, m[:, 2:], radius)
    return ok


def moved_beats_still(src: np.ndarray, tgt: np.ndarray, bwd: np.ndarray, radius: int = 2) -> np.ndarray:
    """(H, W) bool on the target's grid: the source warped by the backward (tgt -> src) flow matches the
    target better than the source in place does (mean absolute difference over a ``2 radius + 1``
    square): the dense counterpart of :func:`moved_not_still`. Pass the source with its exposure fitted
    to the target; a still wall that only darkened is then explained best in place."""
    warped = warp_image(src, bwd)
    t = tgt.astype(np.float32)

    def err(x: np.ndarray) -> np.ndarray:
        d = np.abs(t - x.astype(np.float32))
        return cv2.boxFilter(d.mean(-1) if d.ndim == 3 else d, -1, (2 * radius + 1, 2 * radius + 1))

    return err(warped) < err(src)


def masked_psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR (dB, 8-bit) of ``a`` against ``b`` on ``mask`` (None when the mask is empty)."""
    m = np.asarray(mask, bool)
    if not m.any():
        return None
    d = a.astype(np.float32)[m] - b.astype(np.float32)[m]
    mse = float(np.mean(d * d))
    return 99.0 if mse <= 1e-10 else float(10.0 * np.log10(255.0**2 / mse))


def solid_change(changed: np.ndarray, radius: int) -> np.ndarray:
    """(H, W) bool: ``changed`` opened by a disc of ``radius`` px: the solid part of a change. A thing
    that moves leaves solid changed areas where it was and where it arrives; the outline of a still
    subject that breathes, leaves that flicker and sensor noise change thin slivers and specks."""
    if radius <= 0:
        return changed.astype(bool)
    k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    return cv2.morphologyEx(changed.astype(np.uint8), cv2.MORPH_OPEN, k) > 0


def sparse_matches(
    src: np.ndarray,
    tgt: np.ndarray,
    region: np.ndarray | None = None,
    ratio: float = 0.8,
    min_ncc: float = 0.5,
    max_features: int = 1500,
) -> np.ndarray:
    """(N, 4) float32 ``[x_src, y_src, x_tgt, y_tgt]``: SIFT keypoints of both images (on ``region``
    of each when given), matched by mutual nearest neighbours that pass Lowe's ratio test, kept when
    the 11x11 grey patches around both ends correlate (NCC >= ``min_ncc``). Not geometrically
    filtered: each match stands alone (a hand and the cup it carries move differently)."""
    g1 = to_gray(src)
    g2 = to_gray(tgt)
    mask = None if region is None else region.astype(np.uint8) * 255
    sift = cv2.SIFT_create(nfeatures=max_features, contrastThreshold=0.02)
    k1, d1 = sift.detectAndCompute(g1, mask)
    k2, d2 = sift.detectAndCompute(g2, mask)
    none = np.zeros((0, 4), np.float32)
    if d1 is None or d2 is None or len(k1) < 2 or len(k2) < 2:
        return none
    bf = cv2.BFMatcher(cv2.NORM_L2)
    back = {
        m[0].queryIdx: m[0].trainIdx
        for m in bf.knnMatch(d2, d1, k=2)
        if len(m) == 2 and m[0].distance < ratio * m[1].distance
    }
    pairs = [
        (k1[m[0].queryIdx].pt, k2[m[0].trainIdx].pt)
        for m in bf.knnMatch(d1, d2, k=2)
        if len(m) == 2 and m[0].distance < ratio * m[1].distance and back.get(m[0].trainIdx) == m[0].queryIdx
    ]
    if not pairs:
        return none
    m = np.array([[*a, *b] for a, b in pairs], np.float32)
    # SIFT gives a keypoint once per dominant orientation: one location, one match
    _, first = np.unique(np.rint(m[:, :2]).astype(np.int32), axis=0, return_index=True)
    m = m[np.sort(first)]
    ok = patch_ncc(g1, m[:, :2], g2, m[:, 2:], radius=5) >= min_ncc
    return m[ok]


def coherent_matches(
    m: np.ndarray, flow: np.ndarray | None = None, radius: float = 40.0, tol_px: float = 3.0, rel: float = 0.2
) -> np.ndarray:
    """The matches of :func:`sparse_matches` that something else agrees with: another match within
    ``radius`` px (on the source) moving the same way (within ``tol_px`` + ``rel`` x the move), or
    the dense ``flow`` at the match carrying it there. A lone match that nothing supports is dropped:
    similar texture elsewhere (two objects of one material) can pass the ratio test and the patch
    check, and a wrong drag is worse than none."""
    m = np.asarray(m, np.float32).reshape(-1, 4)
    if len(m) == 0:
        return m
    move = m[:, 2:] - m[:, :2]
    tol = tol_px + rel * np.linalg.norm(move, axis=1)
    d_src = np.linalg.norm(m[:, None, :2] - m[None, :, :2], axis=-1)
    d_move = np.linalg.norm(move[:, None] - move[None], axis=-1)
    near = (d_src <= radius) & (d_src > 1.5) & (d_move <= np.maximum(tol[:, None], tol[None]))
    ok = near.any(axis=1)
    if flow is not None:
        f = sample_field(flow, m[:, :2])
        ok |= np.linalg.norm(f - move, axis=1) <= tol
    return m[ok]


def _klt_chain(grey: list, p: np.ndarray, fb_px: float, hop_ncc: float = 0.7) -> tuple[np.ndarray, np.ndarray]:
    """Points ``p`` (N, 2) followed frame to frame through ``grey`` by pyramidal Lucas-Kanade, checked
    forward-backward at every hop and for the 11x11 patch staying alike from one frame to the next
    (NCC >= ``hop_ncc``): a point of background that an object's edge passes over and then pushes
    along changes its look at that hop, while both directions of the flow agree on the edge's move.
    Returns (end points, alive)."""
    lk = dict(winSize=(15, 15), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p = np.asarray(p, np.float32).reshape(-1, 1, 2).copy()
    alive = np.ones(len(p), bool)
    for a, b in zip(grey[:-1], grey[1:]):
        q, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p, None, **lk)
        r, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, q, None, **lk)
        fb = np.linalg.norm((p - r).reshape(-1, 2), axis=1)
        alive &= (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < fb_px)
        if alive.any():
            k = np.flatnonzero(alive)
            alive[k] &= patch_ncc(a, p.reshape(-1, 2)[k], b, q.reshape(-1, 2)[k], radius=5) >= hop_ncc
        p = q
    return p.reshape(-1, 2), alive


def _grey_frames(frames) -> list:
    return [to_gray(f) for f in frames]


def klt_tracks(
    frames, region: np.ndarray, max_corners: int = 300, min_ncc: float = 0.5, fb_px: float = 1.0
) -> np.ndarray:
    """(N, 4) ``[x_src, y_src, x_tgt, y_tgt]``: corners of the source (``frames[0]``) on ``region``
    followed frame to frame to the target (``frames[-1]``) by pyramidal Lucas-Kanade, checked
    forward-backward at every hop (``fb_px``), whose 11x11 patches at both ends agree (NCC >=
    ``min_ncc``, on texture). Small steps through the frames in between follow a hand or a body that
    deforms, where one dense flow over the whole gap, or a feature match, does not; an occlusion
    breaks the forward-backward check."""
    grey = _grey_frames(frames)
    none = np.zeros((0, 4), np.float32)
    if len(grey) < 2:
        return none
    c = cv2.goodFeaturesToTrack(
        grey[0], maxCorners=max_corners, qualityLevel=0.01, minDistance=5, blockSize=5, mask=region.astype(np.uint8)
    )
    if c is None:
        return none
    p0 = c.reshape(-1, 2).astype(np.float32)
    end, alive = _klt_chain(grey, p0, fb_px)
    m = np.concatenate([p0, end], axis=1)[alive]
    if not len(m):
        return none
    # corners are on texture, so the patch check is real evidence there (flat patches count as agreeing)
    return m[patch_ncc(grey[0], m[:, :2], grey[-1], m[:, 2:], radius=5) >= min_ncc]


def klt_verify(
    frames, src_pts: np.ndarray, tgt_pts: np.ndarray, tol_px: float = 3.0, rel: float = 0.1, fb_px: float = 1.0
) -> np.ndarray:
    """(N,) bool: each source point, tracked frame to frame through ``frames`` (the source first, the
    target last) by pyramidal Lucas-Kanade, checked forward-backward at every hop, ends within
    ``tol_px`` + ``rel`` x its move of its target point. A second, independent path to the same
    correspondence: two people in the same dark suits match by appearance, but one of them does not
    walk to where the other stands."""
    src_pts = np.asarray(src_pts, np.float32).reshape(-1, 2)
    tgt_pts = np.asarray(tgt_pts, np.float32).reshape(-1, 2)
    n = len(src_pts)
    if n == 0 or len(frames) < 2:
        return np.zeros(n, bool)
    end, alive = _klt_chain(_grey_frames(frames), src_pts, fb_px)
    tol = tol_px + rel * np.linalg.norm(tgt_pts - src_pts, axis=1)
    return alive & (np.linalg.norm(end - tgt_pts, axis=1) <= tol)


def klt_contradicts(
    frames, src_pts: np.ndarray, tgt_pts: np.ndarray, tol_px: float = 3.0, rel: float = 0.25, fb_px: float = 1.0
) -> np.ndarray:
    """(N,) bool: the other side of :func:`klt_verify`, on two paths. Lucas-Kanade follows the source
    point forward through ``frames`` (every hop checked) and the target point backward, and each
    arrives more than ``tol_px`` + ``rel`` x the claimed move away from the other end: positive
    evidence that the correspondence is wrong (a tracker that jumped to a look-alike). A point that
    either path loses says nothing: False. One path alone is not enough: on an object's outline its
    window holds background too and it slides. Measured on a synthetic clip whose tracks are right
    to 0.1 px median: one path contradicted 47 of 696 right moving points, both paths 3; on
    ``real2/street_traffic_cars`` 549->597, both paths contradict all 15 points the tracker moved
    from a car onto its look-alike."""
    src_pts = np.asarray(src_pts, np.float32).reshape(-1, 2)
    tgt_pts = np.asarray(tgt_pts, np.float32).reshape(-1, 2)
    if not len(src_pts) or len(frames) < 2:
        return np.zeros(len(src_pts), bool)
    grey = _grey_frames(frames)
    tol = tol_px + rel * np.linalg.norm(tgt_pts - src_pts, axis=1)
    fwd, alive = _klt_chain(grey, src_pts, fb_px)
    out = alive & (np.linalg.norm(fwd - tgt_pts, axis=1) > tol)
    k = np.flatnonzero(out)  # the backward path only where the forward one contradicts
    if len(k):
        bwd, alive = _klt_chain(grey[::-1], tgt_pts[k], fb_px)
        out[k] = alive & (np.linalg.norm(bwd - src_pts[k], axis=1) > tol[k])
    return out


def residual(a: np.ndarray, b: np.ndarray, thresh: float, sigma: float) -> np.ndarray:
    return changed_mask(a, b, thresh, sigma)


def edit_scores(
    name: str,
    edit: np.ndarray,
    holes: np.ndarray,
    src: np.ndarray,
    tgt: np.ndarray,
    C: np.ndarray,
    R: np.ndarray,
    c,
    sigma: float,
) -> dict:
    covered = C & ~holes
    p_edit, p_src = masked_psnr(edit, tgt, covered), masked_psnr(src, tgt, covered)
    gain = None if p_edit is None or p_src is None else p_edit - p_src
    return {
        f"{name}_gain_db": None if gain is None else round(gain, 3),
        f"{name}_false_hole_frac": round(float((holes & ~R).mean()), 5),
        f"{name}_hole_frac": round(float(holes.mean()), 5),
    }


def in_mask(mask: np.ndarray, pts: np.ndarray) -> np.ndarray:
    h, w = mask.shape
    xi = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
    yi = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
    return mask[yi, xi]


def blur_gray(img: np.ndarray, sigma: float) -> np.ndarray:

    return _blur(to_gray(img), sigma)


def warped_edit_scores(name: str, label: str) -> tuple:
    """The scores :func:`judge_warped_edit` writes for edit ``name`` (:class:`vid2pair.core.stage.Score`)."""
    return (
        Score(f"{name}_gain_db", title=f"{label} gain over no edit (dB)", thresholds=("min_gain_db",), worse="low"),
        Score(f"{name}_false_hole_frac"),
        Score(f"{name}_hole_frac"),
        Score(f"{name}_hole_ratio", title=f"{label} holes / changed area", thresholds=("max_hole_ratio",)),
        Score(f"{name}_unexplained_frac"),
        Score(
            f"{name}_unexplained_part_frac",
            title=f"{label} wrong on one changed part",
            thresholds=("max_unexplained_part_frac",),
        ),
        Score(
            f"{name}_unexplained_piece_frac",
            title=f"{label} largest wrong piece / frame",
            thresholds=("max_unexplained_piece_frac",),
        ),
    )


def warped_edit_signal(name: str, label: str, judge, count: str, preview_rank: int, extra_scores: tuple = ()) -> Signal:
    """The signal of an edit that warps the source, with its hole mask (the coarse edit, the collage:
    ``<name>.png`` and ``<name>_mask.png``, switched by ``<name>.enabled``): its ``judge``, its QC
    panel, scores (and the ``extra_scores`` its judge writes) and metrics (``count``: the
    ``meta[name]`` entry counted beside the holes), its trainer input and its preview panel."""
    return Signal(
        name,
        (f"{name}.png", f"{name}_mask.png"),
        f"{name}.enabled",
        judge=judge,
        panels=(name,),
        draw=partial(draw_warped_edit, name=name, label=label),
        scores=warped_edit_scores(name, label) + tuple(extra_scores),
        metrics=warped_edit_metrics(name, label, count, count),
        train=edit_with_holes(f"{name}.png", f"{name}_mask.png"),
        preview=edit_image(name),
        preview_rank=preview_rank,
    )


#: the smallest changed part :func:`worst_part` weighs, as a fraction of the frame (150 px at 240x320)
MIN_PART_FRAC = 0.002


def looks_like_still(
    img: np.ndarray, still: np.ndarray, pts: np.ndarray, reach: float, grey: float, contrast: float = 3.0
) -> np.ndarray:
    """(N,) bool for (N, 2) points of ``img``: within ``reach`` px of the point a pixel of ``still``
    has a 5x5 patch of the same look: mean colour within ``grey`` levels in every channel and grey
    contrast (std) within ``contrast``. Carpet seen through a dog's curled tail, a table edge beside a
    bottle, pavement beside a walker look like the still carpet, table or pavement next to them; a
    track that says they moved with the mover has nothing to show it is not that background."""
    f = np.asarray(img, np.float32)
    if f.ndim == 2:
        f = f[..., None]
    mean = cv2.boxFilter(f, -1, (5, 5)).reshape(f.shape)
    g = to_gray(img).astype(np.float32)
    std = np.sqrt(np.maximum(cv2.boxFilter(g * g, -1, (5, 5)) - cv2.boxFilter(g, -1, (5, 5)) ** 2, 0.0))
    h, w = g.shape
    st = np.asarray(still, bool)
    r = max(1, int(round(reach)))
    out = np.zeros(len(pts), bool)
    for j, (x, y) in enumerate(np.clip(np.rint(np.asarray(pts).reshape(-1, 2)), 0, [w - 1, h - 1]).astype(int)):
        y0, y1, x0, x1 = max(0, y - r), min(h, y + r + 1), max(0, x - r), min(w, x + r + 1)
        k = st[y0:y1, x0:x1]
        if not k.any():
            continue
        same = (np.abs(mean[y0:y1, x0:x1][k] - mean[y, x]).max(axis=-1) < grey) & (
            np.abs(std[y0:y1, x0:x1][k] - std[y, x]) < contrast
        )
        out[j] = bool(same.any())
    return out


def enclosed_by(mask: np.ndarray, pts: np.ndarray, reach: int, min_lines: int = 2) -> np.ndarray:
    """(N,) bool for (N, 2) points: along at least ``min_lines`` of the four lines through a point
    (horizontal, vertical, the two diagonals) ``mask`` is met within ``reach`` px on both sides. The
    inside of a moving hand's plain back is between its moving outlines; a plain desk beside a
    pushed coin has the coin on one side only."""
    m = np.asarray(mask, bool)
    h, w = m.shape
    p = np.rint(np.asarray(pts, np.float64).reshape(-1, 2)).astype(np.int64)
    k = np.arange(1, max(1, int(reach)) + 1)
    lines = np.zeros(len(p), np.int64)
    for dx, dy in ((1, 0), (0, 1), (1, 1), (1, -1)):
        both = np.ones(len(p), bool)
        for sgn in (1, -1):
            x = p[:, :1] + sgn * dx * k[None]
            y = p[:, 1:] + sgn * dy * k[None]
            ok = (x >= 0) & (x < w) & (y >= 0) & (y < h)
            hit = np.zeros(x.shape, bool)
            hit[ok] = m[y[ok], x[ok]]
            both &= hit.any(axis=1)
        lines += both
    return lines >= min_lines


def largest_component(mask: np.ndarray) -> int:
    """Pixels in the largest 8-connected component of ``mask`` (0 when empty)."""
    if not mask.any():
        return 0
    n, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return int(stats[1:, cv2.CC_STAT_AREA].max()) if n > 1 else 0


def worst_part(wrong: np.ndarray, C: np.ndarray, R: np.ndarray) -> float:
    """The largest share of ``wrong`` pixels among the changed pixels ``C`` of one part of the changed
    region (a connected component of ``R``) with at least :data:`MIN_PART_FRAC` of the frame changed;
    0 when there is none. One walker among several whose edit is wrong shows here, where the share
    of the whole change hides it."""
    n, lab = cv2.connectedComponents(np.asarray(R, np.uint8), connectivity=8)
    if n < 2:
        return 0.0
    changed = np.bincount(lab[C], minlength=n)[1:]
    bad = np.bincount(lab[wrong & C], minlength=n)[1:]
    big = changed >= MIN_PART_FRAC * C.size
    return round(float((bad[big] / changed[big]).max()), 4) if big.any() else 0.0


def judge_warped_edit(name: str, min_gain_db: float, p, it, sc: dict, sig_fail: dict) -> None:
    """The rules of an edit that warps the source (the coarse edit, the collage; ``name``): it gains at
    least ``min_gain_db`` over no edit where it covers what changed, draws no ghost there, and its
    holes lie where something disoccludes. ``p``: the pair's evidence (the quality stage's ``_Pair``:
    ``src``, ``tgt``, ``C``, ``R``, ``sigma`` and ``c``, the quality config)."""
    a, c, C, R = it.arrays, p.c, p.C, p.R
    if name not in a or f"{name}_mask" not in a:
        return
    holes = a[f"{name}_mask"] > 0
    e = edit_scores(name, a[name], holes, p.src, p.tgt, C, R, c, p.sigma)
    sc.update(e)
    g, fh = e[f"{name}_gain_db"], e[f"{name}_false_hole_frac"]
    ratio = e[f"{name}_hole_frac"] / max(float(C.mean()), 1e-6)
    e[f"{name}_hole_ratio"] = sc[f"{name}_hole_ratio"] = round(ratio, 3)
    # what it draws (holes aside) must look like the target where it changed: no ghosts
    wrong = C & residual(a[name], p.tgt, c.change_thresh, p.sigma) & ~holes
    wrong = cv2.morphologyEx(wrong.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    sc[f"{name}_unexplained_frac"] = ux = round(float(wrong.sum() / max(1, C.sum())), 4)
    sc[f"{name}_unexplained_part_frac"] = up = worst_part(wrong, C, R)
    sc[f"{name}_unexplained_piece_frac"] = pc = round(largest_component(wrong) / float(wrong.size), 5)
    if c.max_unexplained_frac is not None and ux > c.max_unexplained_frac:
        sig_fail.setdefault(
            name,
            (
                f"{name}_unexplained",
                f"{name} is wrong on {ux:.2f} of the changed region, holes aside (> {c.max_unexplained_frac})",
            ),
        )
    elif c.max_unexplained_part_frac is not None and up > c.max_unexplained_part_frac:
        sig_fail.setdefault(
            name,
            (
                f"{name}_unexplained",
                f"{name} is wrong on {up:.2f} of one changed part, holes aside "
                f"(> {c.max_unexplained_part_frac}): a part cut out and not pasted, or left behind",
            ),
        )
    elif c.max_unexplained_piece_frac is not None and pc > c.max_unexplained_piece_frac:
        sig_fail.setdefault(
            name,
            (
                f"{name}_unexplained",
                f"{name} draws one connected piece wrong on {pc:.4f} of the frame, holes aside "
                f"(> {c.max_unexplained_piece_frac}): something that entered or moved left unholed",
            ),
        )
    elif g is None or g < (need := min_gain_db):
        sig_fail.setdefault(
            name, (f"{name}_no_gain", f"{name} gains {g} dB over no edit on the changed region (< {need})")
        )
    elif fh > c.max_false_hole_frac:
        sig_fail.setdefault(
            name,
            (
                f"{name}_false_holes",
                f"{name} holes where nothing changed: {fh:.4f} of the frame (> {c.max_false_hole_frac})",
            ),
        )
    elif ratio > c.max_hole_ratio:
        sig_fail.setdefault(
            name,
            (
                f"{name}_too_many_holes",
                f"{name} holes are {ratio:.2f} x the changed area (> {c.max_hole_ratio}): more than disocclusion",
            ),
        )
