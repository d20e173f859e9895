"""Small previews of rejected pairs (``output.reject_previews``): source | target | a signal.

A preview is one JPEG strip of up to three panels, each ``width`` px wide: the source, the target,
and the first signal the pair already had, in the order the plan gives (the coarse edit, else the
collage, else the sketch drawn on the target, else the flow magnitude: each signal draws its own,
:attr:`vid2pair.core.stage.Signal.preview`). Users tuning thresholds look at them in the QC report to
see what each rule throws away.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["preview_strip", "edit_image"]


def _panel(img: np.ndarray, width: int) -> np.ndarray:
    h, w = img.shape[:2]
    out = cv2.resize(img, (width, max(1, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)
    return out if out.ndim == 3 else np.repeat(out[..., None], 3, axis=2)


def edit_image(key: str):
    """The preview panel of an edited image ``arrays[key]`` (H, W, 3) (the coarse edit, the collage)."""

    def panel(a: dict) -> np.ndarray | None:
        if key in a and np.asarray(a[key]).ndim == 3:
            return np.asarray(a[key], np.uint8)
        return None

    return panel


def preview_strip(arrays: dict, width: int = 160, quality: int = 80, signals: tuple = ()) -> bytes:
    """JPEG bytes of the strip, or ``b""`` when the pair has no source and target yet. ``signals``:
    the signals' preview panels (:attr:`vid2pair.core.stage.Signal.preview`), tried in order."""
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
    sig = next((img for img in (f(a) for f in signals) if img is not None), None)
    if sig is not None and sig.shape[:2] == src.shape[:2]:
        panels.append(_panel(sig, width))
    strip = np.concatenate(panels, axis=1)
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(strip, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return buf.tobytes() if ok else b""
