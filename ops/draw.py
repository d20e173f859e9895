"""Drawing on RGB uint8 arrays (numpy / OpenCV): drag arrows, masks, sketches, flow colours, region
drags, labels and placeholders, and :class:`Panel`, :class:`PanelView` for the signals' QC panels.

Shared by the QC report (``vid2pair.pipeline.qc``) and the signals' own panel hooks
(:attr:`vid2pair.core.stage.Signal.draw`, defined in each signal's stage module). Points are in the
pixel-centre convention of the rest of the pipeline (integer ``(x, y)`` = centre of column x, row y)
and are drawn exactly there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

from vid2pair.core.stage import Metrics

#: distinct bright RGB colours (drag points, regions)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 160, 255),
    (255, 200, 0),
    (0, 220, 120),
    (255, 96, 255),
    (0, 230, 230),
    (255, 140, 0),
    (170, 120, 255),
    (180, 255, 60),
    (255, 160, 180),
    (120, 200, 255),
    (255, 255, 140),
)

HOLE_COLOR = (255, 0, 255)
SKETCH_COLOR = (0, 255, 0)
REGION_TYPES = ("translation", "rotation", "scaling", "deformation")  # the parts of a type ("translation+scaling")


# ---------------------------------------------------------------- drawing (numpy / OpenCV)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


def _points_array(points) -> np.ndarray:
    """(N, 2, 2) float: [[xs, ys], [xt, yt]] from drag.json points, (N, 4) or (N, 2, 2) arrays."""
    if points is None:
        return np.zeros((0, 2, 2))
    if isinstance(points, dict):
        points = points.get("points", [])
    pts = list(points)
    if pts and isinstance(pts[0], dict):
        return np.array([[p["source"], p["target"]] for p in pts], dtype=np.float64).reshape(-1, 2, 2)
    a = np.asarray(pts, dtype=np.float64)
    return a.reshape(-1, 2, 2) if a.size else np.zeros((0, 2, 2))


def scale_points(xy: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Pixel-centre coordinates in an image resized by (sx, sy): ``(x + 0.5) * s - 0.5``."""
    sy = sx if sy is None else sy
    xy = np.asarray(xy, dtype=np.float64).copy()
    xy[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5
    xy[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5
    return xy


_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel accurate drawing


def _fx(p) -> tuple[int, int]:
    return int(round(float(p[0]) * (1 << _SHIFT))), int(round(float(p[1]) * (1 << _SHIFT)))


def draw_drag_arrows(
    img: np.ndarray, points, color=(255, 0, 0), thickness: int = 1, radius: int = 3, outline: bool = True
) -> np.ndarray:
    """A copy of ``img`` (RGB) with one arrow per drag point, from its handle ``source`` to its
    destination ``target``: a filled disc of ``radius`` px on the handle, the shaft, an arrow head and a
    small disc on the destination, all in ``color`` (one RGB tuple, or one per point), with a thin
    black outline unless ``outline=False``. ``points``: drag.json's ``points`` list (or the whole
    drag.json dict), an (N, 4) ``[xs, ys, xt, yt]`` or (N, 2, 2) array, in this image's pixel
    coordinates (integer = pixel centre). Both end pixels get exactly ``color``."""
    import cv2

    out = _as_rgb(img).copy()
    pts = _points_array(points)
    colors = (
        [tuple(int(c) for c in color)] * len(pts)
        if np.ndim(color) == 1
        else [tuple(int(c) for c in col) for col in color]
    )
    if len(colors) < len(pts):
        raise ValueError(f"{len(colors)} colours for {len(pts)} points")
    black = (0, 0, 0)
    for (s, t), col in zip(pts, colors):
        length = float(np.hypot(*(t - s)))
        tip = min(0.4, 8.0 / length) if length > 0 else 0.0
        if outline:
            if length > 0:
                cv2.arrowedLine(out, _fx(s), _fx(t), black, thickness + 2, cv2.LINE_AA, _SHIFT, tip)
            cv2.circle(out, _fx(s), (radius + 1) << _SHIFT, black, -1, cv2.LINE_8, _SHIFT)
        if length > 0:  # not anti-aliased: the shaft is exactly ``col``
            cv2.arrowedLine(out, _fx(s), _fx(t), col, thickness, cv2.LINE_8, _SHIFT, tip)
        cv2.circle(out, _fx(s), radius << _SHIFT, col, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(out, _fx(t), max(1, radius - 1) << _SHIFT, col, -1, cv2.LINE_8, _SHIFT)
        # the end pixels themselves, whatever the rounding of the discs
        for p in (s, t):
            x, y = int(round(p[0])), int(round(p[1]))
            if 0 <= y < out.shape[0] and 0 <= x < out.shape[1]:
                out[y, x] = col
    return out


def overlay_mask(img: np.ndarray, mask: np.ndarray | None, color=HOLE_COLOR, alpha: float = 0.6) -> np.ndarray:
    """``img`` with ``color`` blended (``alpha``) where ``mask`` > 127 (e.g. 255 = hole)."""
    out = _as_rgb(img).copy()
    if mask is None:
        return out
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    m = m > 127
    out[m] = (out[m] * (1 - alpha) + np.array(color, np.float64) * alpha).round().astype(np.uint8)
    return out


def overlay_sketch(img: np.ndarray, sketch: np.ndarray | None, color=SKETCH_COLOR, dim: float = 0.35) -> np.ndarray:
    """``img`` darkened by ``dim`` with the sketch strokes (``sketch`` > 127) in ``color``."""
    out = (_as_rgb(img).astype(np.float64) * (1 - dim)).round().astype(np.uint8)
    if sketch is not None:
        s = np.asarray(sketch)
        out[(s[..., 0] if s.ndim == 3 else s) > 127] = color
    return out


def flow_to_rgb(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """Colour-wheel flow visualisation: hue = direction, saturation = magnitude / ``max_mag``
    (default: the 99th percentile), white = no motion."""
    import cv2

    f = np.nan_to_num(np.asarray(flow, dtype=np.float32))
    mag = np.hypot(f[..., 0], f[..., 1])
    ang = np.arctan2(f[..., 1], f[..., 0])
    if max_mag is None:
        max_mag = float(np.percentile(mag, 99)) if mag.size else 1.0
    max_mag = max(max_mag, 1e-6)
    hsv = np.zeros((*mag.shape, 3), np.uint8)
    hsv[..., 0] = ((ang + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    hsv[..., 1] = (np.clip(mag / max_mag, 0, 1) * 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


#: operation type -> colour (regions, their arrows and the histogram bars)
def _main_part(kind) -> str:
    """The colour a region type is drawn in: its first part (``translation+scaling``: translation)."""
    return str(kind).split("+")[0]


TYPE_COLORS = {
    "translation": (40, 140, 255),
    "rotation": (255, 150, 0),
    "scaling": (160, 80, 255),
    "deformation": (255, 40, 40),
}
TYPE_COLOR_NAMES = {"translation": "blue", "rotation": "orange", "scaling": "violet", "deformation": "red"}


def draw_region_drags(
    img: np.ndarray,
    region_masks: np.ndarray | None,
    regions: Sequence[dict],
    alpha: float = 0.45,
    sx: float = 1.0,
    sy: float | None = None,
    max_labels: int = 3,
) -> np.ndarray:
    """``img`` (RGB, already at display size) with each region of the label map ``region_masks``
    (value ``mask_index + 1``; same size as ``img``) tinted and outlined in the colour of its operation
    type (:data:`TYPE_COLORS`), its handle -> target arrows, and its type written at its centre (the
    ``max_labels`` largest regions by name, the others by initial). Region coordinates are scaled by
    ``(sx, sy)`` (the display scale of ``img`` relative to the stored frame)."""
    import cv2

    out = _as_rgb(img).copy()
    sy = sx if sy is None else sy
    colors = [TYPE_COLORS.get(_main_part(r.get("type")), (200, 200, 200)) for r in regions]
    for i, (r, col) in enumerate(zip(regions, colors)):
        if region_masks is not None:
            m = (np.asarray(region_masks) == int(r.get("mask_index", i)) + 1).astype(np.uint8)
            if m.any():
                out[m > 0] = (out[m > 0] * (1 - alpha) + np.array(col) * alpha).round().astype(np.uint8)
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(out, contours, -1, col, 1, cv2.LINE_8)
    for r, col in zip(regions, colors):
        hs, ts = r.get("handles") or [], r.get("targets") or []
        if hs and ts:
            pts = scale_points(np.array([[h, t] for h, t in zip(hs, ts)], dtype=np.float64), sx, sy)
            out = draw_drag_arrows(out, pts, col, radius=2)
    order = sorted(range(len(regions)), key=lambda i: -float(regions[i].get("area") or 0))
    for rank, i in enumerate(reversed(order)):  # largest last, i.e. on top
        r = regions[i]
        c = r.get("center") or (r.get("handles") or [[0, 0]])[0]
        cx, cy = scale_points(np.array(c, dtype=np.float64), sx, sy)
        t = str(r.get("type", "?"))
        big = len(order) - 1 - rank < max_labels
        _put_text(out, t if big else t[:1].upper(), (int(cx) + 4, int(cy) - 4), colors[i], 0.36)
    return out


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], color=(255, 255, 255), scale: float = 0.4) -> None:
    import cv2

    h, w = img.shape[:2]
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(org[0], 1, max(1, w - tw - 1)))
    y = int(np.clip(org[1], th + 1, max(th + 1, h - 2)))
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


_ASCII = str.maketrans({"→": ">", "Δ": "d", "×": "x", "·": "|", "≥": ">=", "≤": "<=", "—": "-", "–": "-"})


def _wrap(text: str, width_px: int, scale: float) -> list[str]:
    import cv2

    words, lines, cur = text.translate(_ASCII).split(), [], ""
    for w in words:
        cand = f"{cur} {w}".strip()
        if cur and cv2.getTextSize(cand, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width_px:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    return lines + ([cur] if cur else [])


def placeholder(height: int, width: int, text: str) -> np.ndarray:
    """A grey panel with ``text`` (wrapped) in it: what a missing signal renders as."""
    import cv2

    img = np.full((height, width, 3), 60, np.uint8)
    cv2.line(img, (0, 0), (width - 1, height - 1), (80, 80, 80), 1)
    cv2.line(img, (0, height - 1), (width - 1, 0), (80, 80, 80), 1)
    lines = _wrap(text, width - 12, 0.42)
    y0 = max(14, height // 2 - 9 * len(lines) + 9)
    for i, ln in enumerate(lines):
        cv2.putText(img, ln, (6, y0 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def label_image(img: np.ndarray, text: str, bar_color=(32, 32, 32), text_color=(255, 255, 255)) -> np.ndarray:
    """``img`` with a label bar above it (text wrapped to the width; ASCII rendering of ≥, →, Δ ...)."""
    import cv2

    img = _as_rgb(img)
    lines = _wrap(text, img.shape[1] - 8, 0.42) or [""]
    bar = np.zeros((8 + 16 * len(lines), img.shape[1], 3), np.uint8)
    bar[:] = bar_color
    for i, ln in enumerate(lines):
        cv2.putText(bar, ln, (4, 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, text_color, 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


# ---------------------------------------------------------------- gallery panels


@dataclass
class Panel:
    name: str  # one of PANELS
    label: str  # what the panel shows (unicode; figure titles / HTML captions)
    image: np.ndarray  # RGB uint8 at display size
    missing: str | None = None  # what is missing, when the panel is a placeholder


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if img.shape[1] == w and img.shape[0] == h:
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if w < img.shape[1] else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


def _resize_strokes(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    """Downscale a thin-stroke mask without losing strokes (any coverage counts)."""
    import cv2

    if mask.shape[1] == w and mask.shape[0] == h:
        return mask
    m = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return np.where(m >= 40, 255, 0).astype(np.uint8)


def _pct(v) -> str:
    return "?" if v is None else f"{100 * float(v):.1f} %"


class PanelView:
    """What a signal's panel hook (:attr:`vid2pair.core.stage.Signal.draw`) draws from: one sample
    (``sample``: its images, arrays, meta, drag and region drags, as :class:`vid2pair.pipeline.qc.Sample`
    reads them), the display size (``width`` x ``h``, scales ``sx``, ``sy`` from the stored size) and
    the run (``ds``, optional: it explains a missing signal from the run's config)."""

    def __init__(self, sample: Any, width: int = 256, ds: Any = None):
        self.sample, self.width, self.ds = sample, width, ds
        self.src, self.tgt = sample.image("src"), sample.image("tgt")
        ref = self.src if self.src is not None else self.tgt
        H, W = ref.shape[:2] if ref is not None else tuple(reversed(sample.meta.get("size", [320, 240])))
        self.h = max(1, int(round(H * width / W)))
        self.sx, self.sy = width / W, self.h / H
        self.meta: dict = sample.meta

    def why(self, signal: str) -> str:
        """Why the sample lacks ``signal``: the run's config, or the signal's own reject."""
        if self.ds is not None:
            return self.ds.signal_note(signal, self.meta)
        rej = [r for r in self.meta.get("signal_rejects") or () if r.get("signal") == signal]
        return f"{rej[0]['stage']}/{rej[0]['reason']}: {rej[0]['detail']}" if rej else "not in this sample"

    def missing(self, name: str, label: str, what: str, signal: Optional[str]) -> Panel:
        """The placeholder panel ``name`` saying that ``what`` is missing, and why."""
        reason = f"missing: {what}" + (f" ({self.why(signal)})" if signal else "")
        return Panel(name, f"{label} — missing", placeholder(self.h, self.width, reason), reason)

    def disp(self, img: np.ndarray, nearest: bool = False) -> np.ndarray:
        """``img`` as RGB at display size."""
        return _resize(_as_rgb(img), self.width, self.h, nearest)

    def mask(self, mask: Optional[np.ndarray]) -> Optional[np.ndarray]:
        """A label or hole mask at display size (nearest neighbour; the first channel of a colour PNG)."""
        if mask is None:
            return None
        return _resize(mask if mask.ndim == 2 else mask[..., 0], self.width, self.h, nearest=True)


def draw_warped_edit(v: PanelView, name: str, label: str) -> list[Panel]:
    """The panel of an edit that warps the source (the coarse edit, the collage): the image with its
    holes tinted."""
    img, mask = v.sample.image(name), v.sample.image(f"{name}_mask")
    if img is None:
        return [v.missing(name, f"{label} + holes", f"{name}.png", name)]
    m = v.meta.get(name) or {}
    nseg = m.get("n_segments")  # (the collage's)
    extra = f", {nseg} segments" if nseg else ""
    lab = (
        f"{label}, holes tinted ({_pct(m.get('hole_frac'))}{extra})"
        if mask is not None
        else f"{label} (no {name}_mask.png)"
    )
    return [
        Panel(name, lab, overlay_mask(v.disp(img), None if mask is None else _resize(mask, v.width, v.h, nearest=True)))
    ]


def warped_edit_metrics(name: str, label: str, count: str, count_key: str):
    """The QC metrics (:class:`vid2pair.core.stage.Metrics`) of an edit that warps the source (the
    coarse edit, the collage; ``name``): ``<name>_hole_frac`` and ``<name>_<count>`` (``meta[name][count_key]``)
    from its meta entry, its holes in the caption, a histogram of its hole fraction."""
    hole, other = f"{name}_hole_frac", f"{name}_{count}"

    def measure(meta: dict, read) -> dict:
        m = meta.get(name) or {}
        return {hole: m.get("hole_frac") if m else None, other: m.get(count_key) if m else None}

    def caption(v: dict) -> Optional[str]:
        return None if v[hole] is None else f"{name} holes {_pct(v[hole])}"

    def plot(view) -> None:
        view.hist([(name, view.col(hole))], f"{label} hole fraction", "fraction of the frame")

    return Metrics((hole, other), measure, caption, plot)
