"""Sketch (FramePainter): clean strokes along the motion boundaries of the edit.

FramePainter's sketch condition is the edge map of the optical flow (a Sobel filter on the
flow field): it outlines what moved. Here those edges become clean strokes:

1. **Frame of reference: the target.** At inference FramePainter takes the image to edit plus
   a white-on-black scribble that the user draws over it to describe the *result* (its demo
   feeds the scribble as the control image of the second, edited frame, and a black image for
   the first). So the strokes must outline the moved content where it is in the target.
   Edges of the src -> tgt flow sit at the *source* positions of moving objects; edges in the
   target layout come from the tgt -> src flow. We use ``flow_bwd`` (tgt -> src) when the
   item has it (``flow.bidirectional: true``); otherwise the forward flow is softmax-splatted
   to the target (:func:`target_flow`, Magic Fixup metric sharpened x``SPLAT_SHARPNESS``) and
   each disoccluded hole is filled from the least-moving part of its rim (a hole is background
   that an object uncovered, and with a static camera the background is what moves least), so
   the edge lands on the object's outline rather than halfway across the hole.
2. **Edge strength** ``E = 2 |grad F|``: the Frobenius norm of the flow's Sobel gradient
   (``kornia.filters.spatial_gradient``, normalised) times 2, so a sharp step edge of
   ``d`` px reads ``E = d`` (a jump smeared over ``L`` px reads about ``2 d / L``).
3. **Threshold** ``E > max(abs_thresh_px, rel_thresh * s)`` with ``s`` the 98th percentile of
   the flow magnitude: relative to the largest coherent motion, with an absolute floor so a
   static scene (or flow noise) gives no strokes.
4. **Thinning** to 1-px centre lines (Zhang-Suen, vectorised numpy; ``cv2.ximgproc.thinning``
   when opencv-contrib is installed), then 8-connected skeleton pieces shorter than
   ``min_component_px`` are dropped.
5. **Density**: the strongest strokes (by summed edge strength) are kept while they make up
   at most ``density`` of the skeleton length, and at least one is kept (1.0 keeps all; lower
   values give the sparser, partial sketches a user draws). ``max_stroke_frac`` optionally
   rejects pairs whose final strokes cover more than that fraction of the frame (a mess of
   strokes means a noisy flow).
6. **Stroke width**: dilation with a ``stroke_width`` px disc.

Pixel parameters are at the stored frame size. Output: (H, W) uint8, 255 on strokes, 0 elsewhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np

from vid2pair.core.items import Item, PairItem
from vid2pair.core.spec import frame_scale, knob
from vid2pair.core.stage import Member, Metrics, PairStage, Score, Signal, TrainInput, pair_reject
from vid2pair.ops.draw import Panel, PanelView, _resize_strokes, overlay_sketch
from vid2pair.stages.evidence import looks_like_still, moved_beats_still, new_edges, textured
from vid2pair.stages.splat import check_pair_arrays

__all__ = ["SketchConfig", "sketch_from_flow", "prune_strokes", "edge_strength", "thin", "target_flow", "SketchStage"]

SCALE_PERCENTILE = 98.0
# the Magic Fixup metric is multiplied by this when the flow itself is splatted: a colliding
# pair of source pixels then yields one surface's motion, not a blend of two motions
SPLAT_SHARPNESS = 10.0


@dataclass
class SketchConfig:
    """The sketch: clean strokes along the motion boundaries, in the target's layout."""

    enabled: bool = knob(True, "sketch.png")
    rel_thresh: float = knob(0.25, "edge strength must exceed this x the 98th-percentile flow magnitude ...", ge=0)
    abs_thresh_px: float = knob(1.0, "... and this absolute floor (a static scene gives no strokes)", unit="px", gt=0)
    stroke_width: int = knob(3, "final stroke thickness", unit="px", ge=1)
    min_component_px: int = knob(10, "skeleton pieces shorter than this are dropped", unit="px", ge=1)
    density: float = knob(1.0, "fraction of the skeleton length kept, strongest strokes first", unit="frac", gt=0, le=1)
    max_stroke_frac: Optional[float] = knob(
        None, "reject pairs whose strokes cover more of the frame; null: never", unit="frac", gt=0, le=1
    )
    use_flow_bwd: bool = knob(True, "use flow_bwd (tgt -> src) when present; else splat the forward flow")


# ----------------------------------------------------------------------------------- pieces


def edge_strength(flow: np.ndarray) -> np.ndarray:
    """(H, W) float32 ``2 |grad F|`` (normalised Sobel, replicate border): a step of d px reads d."""
    import kornia
    import torch

    f = torch.from_numpy(np.ascontiguousarray(flow, np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        g = kornia.filters.spatial_gradient(f, mode="sobel", order=1, normalized=True)  # (1, 2, 2, H, W)
        e = g.square().sum(dim=(1, 2)).sqrt_().mul_(2.0)[0]
    return e.numpy()


def _zhang_suen(img: np.ndarray) -> np.ndarray:
    """Zhang & Suen (1984) thinning of a {0, 1} uint8 image with a zero border of >= 1 px."""
    img = img.copy()
    while True:
        changed = False
        for step in (0, 1):
            c = img[1:-1, 1:-1]
            # neighbours clockwise from north: P2 (N), P3 (NE), P4 (E), ... P9 (NW)
            p = [
                img[:-2, 1:-1],
                img[:-2, 2:],
                img[1:-1, 2:],
                img[2:, 2:],
                img[2:, 1:-1],
                img[2:, :-2],
                img[1:-1, :-2],
                img[:-2, :-2],
            ]
            b = sum(q.astype(np.int16) for q in p)
            a = sum(((p[k] == 0) & (p[(k + 1) % 8] == 1)).astype(np.int16) for k in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                cond = ((p2 & p4 & p6) == 0) & ((p4 & p6 & p8) == 0)
            else:
                cond = ((p2 & p4 & p8) == 0) & ((p2 & p6 & p8) == 0)
            rm = (c == 1) & (b >= 2) & (b <= 6) & (a == 1) & cond
            if rm.any():
                c[rm] = 0
                changed = True
        if not changed:
            return img


def thin(mask: np.ndarray) -> np.ndarray:
    """1-px skeleton (bool) of a boolean mask: ``cv2.ximgproc.thinning`` if available, else Zhang-Suen."""
    mask = np.asarray(mask, bool)
    if not mask.any():
        return mask.copy()
    if hasattr(cv2, "ximgproc"):  # opencv-contrib
        return cv2.ximgproc.thinning(mask.astype(np.uint8) * 255) > 0
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1].astype(np.uint8), 1)
    out = np.zeros_like(mask)
    out[y0:y1, x0:x1] = _zhang_suen(crop)[1:-1, 1:-1] > 0
    return out


def _fill_holes_low_motion(field: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Fill each hole (8-connected invalid region) from the least-moving part of its rim.

    The rim of a hole is the valid pixels touching it; the pixels whose flow magnitude is
    within ``0.5 px + 10 %`` of the rim's minimum are the sources, and every hole pixel takes the
    value of the nearest source. A disocclusion (background uncovered by a moving object) is
    thereby filled with the background's motion across its whole width, so the edge lands on
    the object's outline and not halfway across the hole.
    """
    field = np.array(field, np.float32, copy=True)
    valid = np.asarray(valid, bool)
    if valid.all():
        return field
    if not valid.any():
        return np.zeros_like(field)
    mag = np.linalg.norm(field, axis=-1)
    n, lab = cv2.connectedComponents((~valid).astype(np.uint8), connectivity=8)
    ring_lab = cv2.dilate(lab.astype(np.float32), np.ones((3, 3), np.uint8)).astype(np.int64)
    ring = valid & (ring_lab > 0)
    rl, rm = ring_lab[ring], mag[ring]
    cmin = np.full(n, np.inf)
    np.minimum.at(cmin, rl, rm)
    src = np.zeros_like(valid)
    src[ring] = rm <= cmin[rl] * 1.1 + 0.5
    _, near = cv2.distanceTransformWithLabels((~src).astype(np.uint8), cv2.DIST_L2, 5, labelType=cv2.DIST_LABEL_PIXEL)
    sy, sx = np.nonzero(src)
    table = np.zeros((int(near.max()) + 1, 2), np.float32)
    table[near[sy, sx]] = field[sy, sx]
    hole = ~valid
    field[hole] = table[near[hole]]
    return field


def target_flow(
    flow: np.ndarray,
    flow_bwd: Optional[np.ndarray] = None,
    src: Optional[np.ndarray] = None,
    tgt: Optional[np.ndarray] = None,
    hole_thresh: float = 0.5,
) -> tuple[np.ndarray, str]:
    """A tgt -> src flow field on the target's pixel grid, and how it was obtained.

    ``flow_bwd`` when given (``"flow_bwd"``); otherwise ``-flow`` forward-splatted to the target
    (``"splat"``: softmax splatting with the Magic Fixup metric times ``SPLAT_SHARPNESS`` when
    ``src`` and ``tgt`` are given, else average splatting), its holes (density <= ``hole_thresh``) filled from the
    lowest-motion neighbour.
    """
    if flow_bwd is not None:
        return np.asarray(flow_bwd, np.float32), "flow_bwd"
    import torch

    from vid2pair.stages.splat import magicfixup_metric, splat_with_density

    f = torch.from_numpy(np.ascontiguousarray(flow, np.float32)).permute(2, 0, 1)[None]
    with torch.inference_mode():
        metric, mode = None, "avg"
        if src is not None and tgt is not None:
            s = torch.from_numpy(np.ascontiguousarray(src)).permute(2, 0, 1)[None].float() / 255.0
            t = torch.from_numpy(np.ascontiguousarray(tgt)).permute(2, 0, 1)[None].float() / 255.0
            metric, mode = magicfixup_metric(s, t, f) * SPLAT_SHARPNESS, "soft"
        out, dens = splat_with_density(-f, f, metric, mode)
    field = out[0].permute(1, 2, 0).numpy()
    return _fill_holes_low_motion(field, dens[0, 0].numpy() > hole_thresh), "splat"


# ----------------------------------------------------------------------------------- sketch


def sketch_from_flow(flow: np.ndarray, cfg: Optional[SketchConfig] = None, info: Optional[dict] = None) -> np.ndarray:
    """Strokes (H, W) uint8 (255 on 0) along the edges of ``flow`` (H, W, 2), on ``flow``'s own pixel grid.

    Pass the target-frame field (:func:`target_flow`) to get FramePainter's target-layout
    sketch. ``info``, if given, receives ``thresh_px``, ``scale_px``, ``n_strokes`` and
    ``stroke_frac``.
    """
    cfg = cfg or SketchConfig()
    flow = np.asarray(flow, np.float32)
    if flow.ndim != 3 or flow.shape[-1] != 2 or min(flow.shape[:2]) < 1:
        raise ValueError(f"sketch_from_flow expects an (H, W, 2) flow, got {flow.shape}")
    if not np.isfinite(flow).all():
        raise ValueError("sketch_from_flow: flow has non-finite values")
    h, w = flow.shape[:2]
    scale = float(np.percentile(np.linalg.norm(flow, axis=-1), SCALE_PERCENTILE))
    thresh = max(cfg.abs_thresh_px, cfg.rel_thresh * scale)
    strength = edge_strength(flow)
    skel = thin(strength > thresh)
    out = np.zeros((h, w), np.uint8)
    n_kept = 0
    if skel.any():
        n, lab, stats, _ = cv2.connectedComponentsWithStats(skel.astype(np.uint8), connectivity=8)
        area = stats[:, cv2.CC_STAT_AREA].astype(np.int64)
        score = np.bincount(lab.ravel(), weights=np.where(skel, strength, 0.0).ravel(), minlength=n)
        cand = [k for k in range(1, n) if area[k] >= cfg.min_component_px]
        cand.sort(key=lambda k: -score[k])
        total = int(sum(area[k] for k in cand))
        keep, got = [], 0
        for k in cand:  # strongest first, at most density x the length (but at least one stroke)
            if keep and got + area[k] > cfg.density * total + 1e-9:
                break
            keep.append(k)
            got += int(area[k])
        n_kept = len(keep)
        if keep:
            lut = np.zeros(n, np.uint8)
            lut[keep] = 255
            out = lut[lab]
            if cfg.stroke_width > 1:
                k = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (cfg.stroke_width, cfg.stroke_width))
                out = cv2.dilate(out, k)
    if info is not None:
        info.update(
            thresh_px=round(thresh, 4),
            scale_px=round(scale, 4),
            n_strokes=n_kept,
            stroke_frac=round(float((out > 0).mean()), 6),
        )
    return out


def prune_strokes(strokes: np.ndarray, keep: np.ndarray, min_area: int, min_len: float = 0.0) -> np.ndarray:
    """The stroke pixels (bool) inside ``keep``, less the pieces (8-connected) then smaller than
    ``min_area`` pixels or with a centre line (:func:`thin`) shorter than ``min_len`` pixels: what is
    cut out of a stroke can leave a dot, one stroke width across, that outlines nothing (the sketch
    stage itself drops centre lines under ``sketch.min_component_px``)."""
    kept = np.asarray(strokes, bool) & np.asarray(keep, bool)
    if kept.any():
        n, lab, stats, _ = cv2.connectedComponentsWithStats(kept.astype(np.uint8), connectivity=8)
        big = stats[:, cv2.CC_STAT_AREA] >= min_area
        if min_len > 0:
            big &= np.bincount(lab[thin(kept)], minlength=n) >= min_len
        big[0] = False
        kept = big[lab]
    return kept


#: how much stronger (grey levels per pixel) an edge must be in the target than in the source for a
#: sketch stroke next to it to count as drawing something that arrived (``quality.sketch_erase_unverified``)
NEW_EDGE_GREY = 6.0


def _lookalike_pieces(p, strokes: np.ndarray, frac: float, grey: float) -> np.ndarray:
    """The stroke pieces (8-connected, bool mask) of which at least ``frac`` of the pixels look like
    the still background within ``quality.track_lookalike_px`` of them
    (:func:`~vid2pair.stages.evidence.looks_like_still`). Where a mover used to be the target shows
    background, and its edges are new there (the mover had hidden them): a window edge where a
    forearm was (``real/balle1-vp9`` 1->193), the wall base a mouse had covered
    (``real2/mouse_openfield_topdown`` 2059->2099), a table edge beside a bottle, leaves that swayed.
    They look like the still background next to them; a mover's outline holds the mover."""
    n, lab = cv2.connectedComponents(strokes.astype(np.uint8), connectivity=8)
    ys, xs = np.nonzero(lab)
    reach = (p.c.track_lookalike_px or 25.0) * frame_scale(p.tgt.shape, "px@240")
    like = looks_like_still(p.tgt, p.still_background(), np.stack([xs, ys], 1), reach, grey)
    share = np.bincount(lab[ys, xs], weights=like, minlength=n) / np.maximum(np.bincount(lab[ys, xs], minlength=n), 1)
    gone = share >= frac
    gone[0] = False
    return gone[lab]


def judge_sketch(p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The sketch signal's rules (its :attr:`~vid2pair.core.stage.Signal.judge`): at least one stroke,
    the strokes on what changed and next to content whose move the flows verify."""
    a, c, R = it.arrays, p.c, p.R
    if "sketch" not in a:
        return
    strokes = a["sketch"] > 0
    n_on = int(strokes.sum())
    if n_on == 0:
        sc["sketch_on_change"] = None
        sig_fail.setdefault("sketch", ("sketch_empty", "no stroke"))
        return
    width = int((it.meta.get("sketch") or {}).get("stroke_width", 3))
    k = np.ones((2 * width + 1, 2 * width + 1), np.uint8)
    wide = cv2.dilate(R.astype(np.uint8), k) > 0
    sc["sketch_on_change"] = round(float((strokes & wide).sum() / n_on), 4)
    if p.vb is not None:  # the strokes outline content whose move the flows agree on (not flow noise)
        near = cv2.dilate(p.verified_tgt.astype(np.uint8), k) > 0
        sc["sketch_verified"] = round(float((strokes & near).sum() / n_on), 4)
    if sc["sketch_on_change"] < c.sketch_min_on_change:
        sig_fail.setdefault(
            "sketch",
            (
                "sketch_off_change",
                f"{sc['sketch_on_change']:.2f} of the stroke pixels on what changed (< {c.sketch_min_on_change})",
            ),
        )
    elif sc.get("sketch_verified") is not None and sc["sketch_verified"] < c.sketch_min_verified:
        sig_fail.setdefault(
            "sketch",
            (
                "sketch_unverified",
                f"{sc['sketch_verified']:.2f} of the stroke pixels next "
                f"to moving content whose flow is forward-backward "
                f"consistent (< {c.sketch_min_verified})",
            ),
        )
    elif p.vb is not None and c.sketch_erase_unverified:
        # the sketch holds; its strokes through flow noise go. A stroke pixel stays only next to verified
        # moving content that is seen to move: textured (on a plain wall or road where a mover left, any
        # flow matches), matched better moved than in place (not a still wall whose exposure changed),
        # and within a pixel of an edge the target has and the source has not (an outline as it
        # arrived; not the outline of where an arm or a wrist used to be, which the flow smeared)
        new = cv2.dilate(new_edges(p.comp, p.tgt, NEW_EDGE_GREY).astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        seen = p.verified_tgt & textured(p.tgt) & moved_beats_still(p.comp, p.tgt, p.bwd) & new
        kept = prune_strokes(
            strokes, cv2.dilate(seen.astype(np.uint8), k) > 0, min_area=10 * width, min_len=p.px("sketch_min_stroke_px")
        )
        if c.sketch_lookalike_frac is not None and kept.any():
            kept &= ~_lookalike_pieces(p, kept, c.sketch_lookalike_frac, c.sketch_lookalike_grey)
        sc["sketch_erased"] = round(1.0 - float(kept.sum()) / n_on, 4)
        if not kept.any():
            sig_fail.setdefault("sketch", ("sketch_unverified", "no stroke piece next to verified moving content"))
        elif sc["sketch_erased"] > 0:
            a["sketch"] = np.where(kept, 255, 0).astype(np.uint8)
            meta = it.meta.setdefault("sketch", {})
            meta["erased_frac"] = sc["sketch_erased"]
            meta["stroke_frac"] = round(float(kept.mean()), 6)


def draw_sketch(v: PanelView) -> list[Panel]:
    """The sketch's QC panel (its :attr:`~vid2pair.core.stage.Signal.draw`): the strokes on the target."""
    sk = v.sample.image("sketch")
    if sk is None or v.tgt is None:
        return [v.missing("sketch", "sketch on target", "sketch.png", "sketch")]
    n = (v.meta.get("sketch") or {}).get("n_strokes")
    strokes = _resize_strokes(sk if sk.ndim == 2 else sk[..., 0], v.width, v.h)
    return [
        Panel(
            "sketch",
            "sketch on target" + (f" ({n} strokes)" if n is not None else ""),
            overlay_sketch(v.disp(v.tgt), strokes),
        )
    ]


def _measure_sketch(meta: dict, read) -> dict:
    m = meta.get("sketch") or {}
    return {
        "sketch_stroke_frac": m.get("stroke_frac") if m else None,
        "sketch_n_strokes": m.get("n_strokes") if m else None,
    }


def _plot_sketch(view) -> None:
    view.hist([("pairs", view.col("sketch_stroke_frac"))], "sketch stroke fraction", "fraction of the frame")


#: what QC measures of a sketch: its stroke share of the frame and its stroke count (meta["sketch"])
SKETCH_METRICS = Metrics(("sketch_stroke_frac", "sketch_n_strokes"), _measure_sketch, plot=_plot_sketch)


def preview_sketch(a: dict) -> Optional[np.ndarray]:
    """A rejected pair's preview panel: the strokes in green on the dimmed target."""
    if "sketch" not in a or "tgt" not in a:
        return None
    t = (np.asarray(a["tgt"], np.float32) * 0.4).astype(np.uint8)
    t[np.asarray(a["sketch"]) > 0] = (0, 255, 0)
    return t


SKETCH_INPUT = TrainInput(
    channels=1,  # the strokes, 0 / 1
    decode=lambda r: {"signal": r.image("sketch.png", rgb=False)},
    display=lambda signal, src: signal.expand(-1, 3, -1, -1).clamp(0, 1),
)


class SketchStage(PairStage):
    """Adds ``arrays["sketch"]`` (H, W) uint8 (255 strokes on 0, target layout) and ``meta["sketch"]``."""

    name = "sketch"
    sections = {"sketch": SketchConfig}
    reads = ("src", "tgt", "flow", "flow_bwd", "flow_bwd_valid")
    writes = (Member("sketch.png", "sketch", "png"),)
    signals = (
        Signal(
            "sketch",
            ("sketch.png",),
            "sketch.enabled",
            judge=judge_sketch,
            panels=("sketch",),
            draw=draw_sketch,
            scores=(
                Score(
                    "sketch_on_change",
                    title="sketch strokes on the change",
                    thresholds=("sketch_min_on_change",),
                    worse="low",
                ),
                Score("sketch_verified"),
                Score("sketch_erased"),
            ),
            metrics=SKETCH_METRICS,
            train=SKETCH_INPUT,
            preview=preview_sketch,
            preview_rank=2,
        ),
    )

    def __init__(self, cfg):
        super().__init__(cfg)
        self.c: SketchConfig = cfg.sketch

    def one(self, it: PairItem) -> Item:
        bad = check_pair_arrays(it)
        if bad:
            return pair_reject(it, self.name, *bad)
        a = it.arrays
        bwd = a.get("flow_bwd") if self.c.use_flow_bwd else None
        if bwd is not None:
            bwd = np.asarray(bwd)
            if bwd.shape != a["flow"].shape or not np.isfinite(bwd).all():
                return pair_reject(it, self.name, "invalid_flow", "flow_bwd is non-finite or of the wrong shape")
        field, how = target_flow(a["flow"], bwd, a["src"], a["tgt"])
        valid = a.get("flow_bwd_valid") if how == "flow_bwd" else None
        if valid is not None and not np.asarray(valid, bool).all():
            # inconsistent target pixels (occlusions): filled from their least-moving surroundings,
            # like the splat's holes, so the strokes follow the consistent outlines
            field = _fill_holes_low_motion(np.asarray(field, np.float32), np.asarray(valid, bool))
            how = "flow_bwd (fb-filled)"
        info: dict = {}
        a["sketch"] = sketch_from_flow(field, self.c, info)
        it.meta["sketch"] = {"frame": "tgt", "flow": how, **info}
        if self.c.max_stroke_frac is not None and info["stroke_frac"] > self.c.max_stroke_frac:
            return pair_reject(
                it, self.name, "sketch_too_dense", f"strokes cover {info['stroke_frac']:.3f} > {self.c.max_stroke_frac}"
            )
        return it
