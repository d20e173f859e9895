"""Image operations shared by the stages: one grey conversion."""

from __future__ import annotations

import cv2
import numpy as np


def to_gray(img: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grey of an RGB (H, W, 3) image (OpenCV's weights); a grey image passes through."""
    if img.ndim == 2:
        return img
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)
