"""Small previews of rejected pairs (``output.reject_previews``): source | target | a signal.

A preview is one JPEG strip of up to three panels, each ``width`` px wide: the source, the target,
and the first signal the pair already had (the coarse edit, else the collage, else the sketch drawn
on the target, else the flow magnitude). Users tuning thresholds look at them in the QC report to
see what each rule throws away.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["preview_strip"]


def _panel(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    out = cv2.resize(img, (width, max(1, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2)


def _signal(a: dict) -> np.ndarray | None:
    for k in ("coarse", "collage"):
        if k in a and np.asarray(a[k]).ndim == 3:
            return np.asarray(a[k], np.uint8)
    if "sketch" in a and "tgt" in a:
        t = (np.asarray(a["tgt"], np.float32) * 0.4).astype(np.uint8)
        t[np.asarray(a["sketch"]) > 0] = (0, 255, 0)
        return t
    if "flow" in a:
        f = np.asarray(a["flow"], np.float32)
        mag = np.hypot(f[..., 0], f[..., 1])
        scale = float(np.percentile(mag, 99)) or 1.0
        return cv2.applyColorMap(np.clip(mag / scale * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]
    return None


def preview_strip(arrays: dict, width: int = 160, quality: int = 80) -> bytes:
    """JPEG bytes of the strip, or ``b""`` when the pair has no source and target yet."""
    a = arrays
    if "src" in a and "tgt" in a:
        src, tgt = np.asarray(a["src"]), np.asarray(a["tgt"])
    elif "frames" in a and len(a["frames"]) >= 2:
        src, tgt = np.asarray(a["frames"][0]), np.asarray(a["frames"][-1])
    else:
        return b""
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        return b""
    panels = [_panel(src, width), _panel(tgt, width)]
    sig = _signal(a)
    if sig is not None and sig.shape[:2] == src.shape[:2]:
        panels.append(_panel(sig, width))
    strip = np.concatenate(panels, axis=1)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""
