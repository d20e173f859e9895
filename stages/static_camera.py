"""static_camera: score the camera motion of a shot and keep only static-camera shots.

Method: frames sampled evenly across the shot (grayscale, ~320 px wide). For each consecutive
sampled pair, corners (Shi-Tomasi) are tracked with pyramidal Lucas-Kanade (forward-backward
checked) and a similarity transform is fitted with RANSAC (``cv2.estimateAffinePartial2D``). The
dominant (background) motion is that transform; moving foreground objects are outliers. The
transforms are chained, so a slow pan accumulates while a fixed camera's jitter does not. The
camera shift at sample k is the mean displacement of the four image corners under the chained
transform 0->k, as a fraction of the image diagonal; the shot's score is the largest of these,
and the shot is static when ``score <= static_camera.max_shift``. See docs/calibration.md.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from vid2pair.core.spec import knob


@dataclass
class StaticCameraConfig:
    """Keep only shots whose camera does not move (docs/calibration.md)."""
    enabled: bool = knob(True, "false: every shot counts as static")
    samples: int = knob(8, "frames sampled across the shot", ge=2)
    analysis_width: int = knob(320, "frames are decoded this wide for the camera-motion fit", unit="px", ge=32)
    max_shift: float = knob(0.008, "camera score threshold (largest chained corner shift)", unit="frac_diag", gt=0)
    min_inliers: int = knob(12, "fewer RANSAC inliers: camera_motion_unknown (a similarity needs 2 points)", ge=3)


def _track(a: np.ndarray, b: np.ndarray, max_corners: int = 400):
    p0 = cv2.goodFeaturesToTrack(a, maxCorners=max_corners, qualityLevel=0.01, minDistance=7, blockSize=7)
    if p0 is None or len(p0) < 4:
        return None, None
    lk = dict(winSize=(21, 21), maxLevel=4,
              criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
    p1, st1, _ = cv2.calcOpticalFlowPyrLK(a, b, p0, None, **lk)
    p0r, st2, _ = cv2.calcOpticalFlowPyrLK(b, a, p1, None, **lk)
    fb = np.linalg.norm((p0 - p0r).reshape(-1, 2), axis=1)
    ok = (st1.ravel() == 1) & (st2.ravel() == 1) & (fb < 1.0)
    return p0.reshape(-1, 2)[ok], p1.reshape(-1, 2)[ok]


def pair_transform(a: np.ndarray, b: np.ndarray, min_inliers: int = 12):
    """Similarity transform (2x3) of the dominant motion a->b, and the RANSAC inlier count."""
    p0, p1 = _track(a, b)
    if p0 is None or len(p0) < min_inliers:
        return None, 0 if p0 is None else int(len(p0))
    m, inl = cv2.estimateAffinePartial2D(p0, p1, method=cv2.RANSAC, ransacReprojThreshold=1.0,
                                         maxIters=2000, confidence=0.995)
    n_in = int(inl.sum()) if inl is not None else 0
    if m is None or n_in < min_inliers:
        return None, n_in
    return m, n_in


def camera_motion_score(frames: np.ndarray, min_inliers: int = 12) -> dict:
    """``frames``: (N,H,W,3) RGB or (N,H,W) gray, sampled across a shot.

    Returns ``{"score": largest chained corner shift (fraction of diagonal), "shifts": [...],
    "inliers": [...], "tracked": bool}``. ``tracked`` is False when some pair had too few
    trackable points; the score is then infinite (the camera motion cannot be established).
    """
    gray = [f if f.ndim == 2 else cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]
    h, w = gray[0].shape
    diag = float(np.hypot(w, h))
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], np.float64)
    acc = np.eye(3)
    shifts, inliers = [], []
    for a, b in zip(gray[:-1], gray[1:]):
        m, n_in = pair_transform(a, b, min_inliers)
        inliers.append(n_in)
        if m is None:
            shifts.append(float("inf"))
            break
        acc = np.vstack([m, [0.0, 0.0, 1.0]]) @ acc
        moved = corners @ acc[:2, :2].T + acc[:2, 2]
        shifts.append(float(np.linalg.norm(moved - corners, axis=1).mean()) / diag)
    tracked = all(np.isfinite(shifts))
    return {"score": max(shifts) if shifts else 0.0,
            "shifts": [round(s, 6) if np.isfinite(s) else None for s in shifts],
            "inliers": inliers, "tracked": tracked}


def sample_indices(start: int, end: int, n: int) -> list[int]:
    """``n`` indices spread evenly over ``[start, end)``."""
    n = max(2, min(n, end - start))
    return sorted({int(round(x)) for x in np.linspace(start, end - 1, n)})
