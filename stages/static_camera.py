"""static_camera: score the camera motion of a shot and keep only static-camera shots.

Method: frames sampled evenly across the shot (grayscale, ~320 px wide). Each sample is aligned
to the previous alignable one: corners (Shi-Tomasi, retried with a lower quality level on plain
scenes) tracked with pyramidal Lucas-Kanade (forward-backward checked), a similarity transform
fitted with RANSAC (``cv2.estimateAffinePartial2D``). The dominant (background) motion is that
transform; moving foreground objects are outliers. The transforms are chained, so a slow pan
accumulates while a fixed camera's jitter does not. The score is the spread of the chained
positions (see :func:`camera_motion_score`), as a fraction of the image diagonal, and the shot is
static when ``score <= static_camera.max_shift``. See docs/calibration.md.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vid2pair.core.spec import knob
from vid2pair.ops.image import to_gray
from vid2pair.stages.evidence import changed_mask, object_region


@dataclass
class StaticCameraConfig:
    """Keep only shots whose camera does not move (docs/calibration.md)."""

    enabled: bool = knob(True, "false: every shot counts as static")
    samples: int = knob(8, "frames sampled across the shot", ge=2)
    analysis_width: int = knob(320, "frames are decoded this wide for the camera-motion fit", unit="px", ge=32)
    max_shift: float = knob(0.008, "camera score threshold (largest chained corner shift)", unit="frac_diag", gt=0)
    min_inliers: int = knob(12, "fewer RANSAC inliers: camera_motion_unknown (a similarity needs 2 points)", ge=3)


def _track(a: np.ndarray, b: np.ndarray, max_corners: int = 400, quality: float = 0.01, spacing: int = 7):
    p0 = cv2.goodFeaturesToTrack(
        a, maxCorners=max_corners, qualityLevel=quality, minDistance=spacing, blockSize=spacing
    )
    if p0 is None or len(p0) < 4:
        return None, None
    lk = dict(winSize=(21, 21), maxLevel=4, criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **lk)
    p0r, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **lk)
    fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < 1.0)
    return p0.reshape(-1, 2)[ok], p1.reshape(-1, 2)[ok]


def pair_transform(
    a: np.ndarray,
    b: np.ndarray,
    min_inliers: int = 12,
    static_px: float = 0.5,
    static_frac: float = 0.2,
    return_points: bool = False,
):
    """Similarity transform (2x3) of the dominant motion a->b, and its inlier count (and, with
    ``return_points``, the inlier corners on ``a``).

    Corners come from Shi-Tomasi at quality 0.01, and again at quality 0.001 / 5-px spacing when
    that finds too few (plain, textureless scenes: a desk, a wall). When at least ``static_frac``
    of the tracked corners (and ``min_inliers // 2`` of them) stay within ``static_px``, the
    camera is taken to be still and the transform is fitted to those corners only: a large moving
    object holds most of the corners of such scenes and would otherwise win the RANSAC vote, but a
    moving camera leaves no corner in place."""
    best = (None, 0, np.zeros((0, 2), np.float32))
    for quality, spacing in ((0.01, 7), (0.001, 5)):
        p0, p1 = _track(a, b, quality=quality, spacing=spacing)
        if p0 is None or len(p0) < 3:
            continue
        still = np.linalg.norm(p1 - p0, axis=1) < static_px
        n_still = int(still.sum())
        if n_still >= max(3, min_inliers // 2) and n_still >= static_frac * len(p0):
            m, _ = cv2.estimateAffinePartial2D(p0[still], p1[still], method=cv2.LMEDS)
            if m is not None:
                best = (m, n_still, p0[still])
                break
        if len(p0) >= min_inliers:
            m, inl = cv2.estimateAffinePartial2D(
                p0, p1, method=cv2.RANSAC, ransacReprojThreshold=1.0, maxIters=2000, confidence=0.995
            )
            n_in = int(inl.sum()) if inl is not None else 0
            if m is not None and n_in >= min_inliers:
                best = (m, n_in, p0[inl.ravel() > 0])
                break
            if n_in > best[1]:
                best = (None, n_in, best[2])
        elif len(p0) > best[1]:
            best = (None, int(len(p0)), best[2])
    return best if return_points else best[:2]


def _changed(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Where two grey frames differ (blurred, > 8 grey levels), closed, filled and dilated: what moved."""
    return object_region(changed_mask(a, b, 8.0, 1.5), close_px=4, dilate_px=4)


def _explains(a: np.ndarray, b: np.ndarray, m: np.ndarray, gain: float = 0.9, where: np.ndarray | None = None) -> bool:
    """Whether warping ``a`` by ``m`` explains ``b`` clearly better than leaving it in place (mean
    absolute difference of the blurred frames over the pixels the warp keeps inside the frame, and
    within ``where`` when given)."""
    ga = cv2.GaussianBlur(a.astype(np.float32), (0, 0), 1.0)
    gb = cv2.GaussianBlur(b.astype(np.float32), (0, 0), 1.0)
    h, w = a.shape
    warped = cv2.warpAffine(ga, m.astype(np.float64), (w, h), flags=cv2.INTER_LINEAR, borderValue=-1.0)
    inside = warped >= 0
    if inside.mean() < 0.5:
        return True  # a large motion: the fit is not noise
    if where is not None:
        inside &= where
        if inside.sum() < 50:
            return False
    return float(np.abs(warped - gb)[inside].mean()) < gain * float(np.abs(ga - gb)[inside].mean())


def pair_camera_fit(
    a: np.ndarray,
    b: np.ndarray,
    min_inliers: int = 12,
    analysis_width: int = 320,
    still_px: float = 0.3,
    still_share: float = 0.5,
) -> tuple[float | None, int, np.ndarray | None]:
    """How far the camera moved between two grey frames of a pair (mean displacement of the image
    corners, in ``a``'s px; None when it cannot be told), the inliers, and the fitted 2x3
    similarity taking ``a``'s background onto ``b``'s (None when the shift is unknown or counts as
    0). Corners on moving objects (blobs of the changed region, which survive a morphological
    opening; the thin lines a camera shake leaves along edges do not) are left out, and a fit that
    does not explain the textured background better than no motion counts as 0, and so does a
    background of which ``still_share`` of the corners stayed within ``still_px``: what moves there is
    something in the scene (a person behind the subject, slower than the change threshold sees).

    Frames wider than ``analysis_width`` are fitted downscaled to it: the blob test and the
    tracker's spacing are tuned for that size, and on a 576x1024 frame upscaled from a 640x480 video a
    shake's edge lines come out thick enough to pass for moving blobs, which left too few corners
    (measured on a real pair: unknown at full size, 5.9 px once fitted at 320 px)."""
    h0, w0 = a.shape
    if analysis_width and w0 > analysis_width:
        s = analysis_width / float(w0)
        size = (analysis_width, max(16, int(round(h0 * s))))
        small = [cv2.resize(x, size, interpolation=cv2.INTER_AREA) for x in (a, b)]
        shift, n_in, m = pair_camera_fit(small[0], small[1], min_inliers, 0, still_px, still_share)
        sx, sy = w0 / float(size[0]), h0 / float(size[1])
        if m is not None:  # back to a's pixels: x = sx * x_small, y = sy * y_small
            m = m.copy()
            m[0, 2] *= sx
            m[1, 2] *= sy
            m[0, 1] *= sx / sy
            m[1, 0] *= sy / sx
        return (None if shift is None else shift * sx), n_in, m
    changed = changed_mask(a, b, 8.0, 1.0).astype(np.uint8)
    k5 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (5, 5))
    blobs = cv2.dilate(cv2.morphologyEx(changed, cv2.MORPH_OPEN, k5), np.ones((9, 9), np.uint8)) > 0
    h, w = a.shape
    best: tuple = (None, 0, None)
    for quality, spacing in ((0.01, 7), (0.001, 5)):
        p0, p1 = _track(a, b, quality=quality, spacing=spacing)
        if p0 is None:
            continue
        xi = np.clip(np.rint(p0[:, 0]).astype(int), 0, w - 1)
        yi = np.clip(np.rint(p0[:, 1]).astype(int), 0, h - 1)
        keep = ~blobs[yi, xi]
        p0, p1 = p0[keep], p1[keep]
        if len(p0) < min_inliers:
            best = max(best, (None, int(len(p0)), None), key=lambda r: r[1])
            continue
        still = np.linalg.norm(p1 - p0, axis=1) < still_px
        if still.sum() >= max(min_inliers // 2, still_share * len(p0)):
            # most of the background did not move: the camera is still, whatever a fit to the rest says
            # (a person moving slightly behind the subject changes too little to be masked out)
            return 0.0, int(still.sum()), None
        m, inl = cv2.estimateAffinePartial2D(
            p0, p1, method=cv2.RANSAC, ransacReprojThreshold=1.0, maxIters=2000, confidence=0.995
        )
        n_in = int(inl.sum()) if inl is not None else 0
        if m is None or n_in < min_inliers:
            best = max(best, (None, n_in, None), key=lambda r: r[1])
            continue
        corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
        shift = float(np.linalg.norm(corners @ m[:, :2].T + m[:, 2] - corners, axis=1).mean())
        textured = _texture(a) & ~blobs
        if _explains(a, b, m, where=textured):
            return shift, n_in, m
        return 0.0, n_in, None
    return best


def _texture(gray: np.ndarray) -> np.ndarray:
    g = cv2.GaussianBlur(gray.astype(np.float32), (0, 0), 1.5)
    return np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)) / 8.0 > 3.0


def camera_motion_score(
    frames: np.ndarray, min_inliers: int = 12, plain_background_frac: float = 0.5, plain_texture_frac: float = 0.02
) -> dict:
    """``frames``: (N,H,W,3) RGB or (N,H,W) gray, sampled across a shot.

    Each sample is aligned to the last sample that could be aligned (so one frame the camera
    cannot be tracked in, e.g. a hand covering the scene, is bridged), and the transforms are
    chained: a slow pan accumulates, a fixed camera's jitter does not. A sample's position is where
    its chained transform moves the four image corners (a fraction of the image diagonal); the
    distance of two positions is the mean distance of their corners, and the score is the largest
    distance between two positions.

    A step whose inlier corners nearly all (>= 80 %) lie on what changed between the two frames
    measures a moving object, not the camera, and is not used (only when most of the frame stays
    put: a moving camera changes it all). A fit that does not explain the second frame clearly
    better than no motion (noise corners on a plain scene, a title card, a fade, a lighting
    change) counts as a still camera.

    When fewer than half of the steps can be aligned, the background decides: if what does not
    change covers at least ``plain_background_frac`` of the frame (median over the steps) and what
    never changes is plain (at most ``plain_texture_frac`` of it textured), any camera motion is
    invisible there and the shot counts as static (``mode: plain_background``, score 0).
    Otherwise ``tracked`` is False and the score infinite: the camera motion cannot be established.
    """
    gray = [to_gray(f) for f in frames]
    h, w = gray[0].shape
    diag = float(np.hypot(w, h))
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    accs = {0: np.eye(3)}
    anchor = 0
    inliers, object_steps, still_frac = [], 0, []
    never = np.ones((h, w), bool)
    for k in range(1, len(gray)):
        changed = _changed(gray[anchor], gray[k])
        never &= ~changed
        still_frac.append(1.0 - float(changed.mean()))
        m, n_in, pts = pair_transform(gray[anchor], gray[k], min_inliers, return_points=True)
        inliers.append(n_in)
        if m is not None and len(pts) and changed.mean() < 0.5:
            xi = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
            yi = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
            if changed[yi, xi].mean() >= 0.8 and np.abs(m - np.eye(2, 3)).max() > 1e-3:
                object_steps += 1
                m = None  # the corners are on a moving object in a still frame: no evidence about the camera
        if m is None:
            continue  # bridged: the next sample is aligned to the same anchor
        if not _explains(gray[anchor], gray[k], m):
            m = np.eye(2, 3)  # the pixels do not move with the fit (noise corners): the camera is still
        accs[k] = np.vstack([m, [0.0, 0.0, 1.0]]) @ accs[anchor]
        anchor = k
    steps = len(gray) - 1
    tracked = steps == 0 or (len(accs) - 1) >= max(1, (steps + 1) // 2)
    out = {"inliers": inliers, "aligned": sorted(accs), "object_steps": object_steps, "mode": "corners"}
    if not tracked:
        still = float(np.median(still_frac)) if still_frac else 0.0
        textured = float(_texture(gray[0])[never].mean()) if never.any() else 1.0
        out.update(background_frac=round(still, 4), background_texture=round(textured, 4))
        if still >= plain_background_frac and textured <= plain_texture_frac:
            return {**out, "score": 0.0, "positions": [], "tracked": True, "mode": "plain_background"}
        return {**out, "score": float("inf"), "positions": [], "tracked": False}
    # each aligned sample's position: where the chained transform moves the four image corners
    pos = np.array([((corners @ a[:2, :2].T + a[:2, 2]) - corners) / diag for a in accs.values()])  # (K, 4, 2)
    d = np.linalg.norm(pos[:, None] - pos[None, :], axis=-1).mean(axis=-1)  # mean corner distance
    return {
        **out,
        "score": float(d.max()) if d.size else 0.0,
        "positions": [round(float(np.linalg.norm(p, axis=1).mean()), 6) for p in pos],
        "tracked": True,
    }


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``[start, end)``."""
    n = max(2, min(n, end - start))
    return sorted({int(round(x)) for x in np.linspace(start, end - 1, n)})
