"""Similarity transforms fitted to flow: what the collage and the region drags share."""

from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def segment_median_flow(flow: np.ndarray, pix: np.ndarray) -> float:
    f = flow.reshape(-1, 2)[pix]
    return float(np.median(np.hypot(f[:, 0], f[:, 1]))) if len(f) else 0.0


def _similarity_params(A: np.ndarray) -> tuple[float, float]:
    """(scale, angle in degrees, positive = clockwise on screen since y points down) of a 2x3 similarity."""
    a, b = float(A[0, 0]), float(A[1, 0])
    return float(np.hypot(a, b)), float(np.degrees(np.arctan2(b, a)))


def fit_similarity(pts: np.ndarray, dst: np.ndarray, thresh: float) -> tuple[Optional[np.ndarray], int]:
    """RANSAC similarity ``pts -> dst`` (N, 2); returns (2x3 float64 or None, number of inliers)."""
    if len(pts) < 2:
        return None, 0
    A, inl = cv2.estimateAffinePartial2D(
        np.ascontiguousarray(pts, np.float32),
        np.ascontiguousarray(dst, np.float32),
        method=cv2.RANSAC,
        ransacReprojThreshold=float(thresh),
    )
    if A is None:
        return None, 0
    return A.astype(np.float64), int(inl.sum()) if inl is not None else 0


def residual_px(A: np.ndarray, xy: np.ndarray, f: np.ndarray) -> float:
    """Median ``|A p - (p + f)|`` over points ``xy`` (N, 2) with flows ``f`` (N, 2)."""
    q = xy @ A[:, :2].T + A[:, 2]
    return float(np.median(np.hypot(*(q - xy - f).T))) if len(xy) else float("nan")
