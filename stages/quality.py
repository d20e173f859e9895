"""quality: every signal of a pair judged against the pair's own images, whichever flow, tracker or
segmenter made it.

The target is known at build time, so each signal can be checked against it. Measurements
(:mod:`vid2pair.stages.evidence`; ``C`` is the changed region, pixels where the blurred source
and target differ by more than ``quality.change_thresh`` grey levels, ``R`` the same closed,
filled and slightly dilated):

* **visible change** (pair): ``changed_frac`` = mean of ``C``. Below ``min_changed_frac`` nothing
  visibly changes, whatever the flow says: ``no_visible_change``; above ``max_changed_frac`` most
  of the frame changed (a cut, a title card, a fade, a camera or lighting change): ``global_change``.
* **flow** (pair): ``fb_consistent`` = the fraction of the moving pixels (``R`` and ``|F| >
  moving_px``) whose forward flow the backward flow undoes (needs ``flow.bidirectional``).
  Below ``min_fb_consistent``: ``flow_inconsistent``.
* **correspondence** (pair): the source forward-warped by the flow (the coarse edit, or the same
  splat made here when the coarse edit is off) must explain the target where it changed.
  ``unexplained_frac`` is the share of ``C`` that a non-hole warped pixel still gets wrong (by
  more than ``change_thresh``; opened by a 3x3 square, so 1-px outline slips do not count) and
  ``unexplained_blob_frac`` the largest connected piece of it, or the largest changed region (a
  component of ``R``) that is mostly unexplained, as a fraction of the frame: an object that
  appears or disappears (a car entering, new text on a screen) has no correspondence, and its
  region stays unexplained
  (``unmatched_change`` above ``max_unexplained_frac`` or ``max_unexplained_blob_frac``).
* **coarse edit / collage** (signal): ``*_gain_db``, PSNR against the target on the changed,
  covered pixels minus that of "no edit" (the source) on the same pixels, at least
  ``coarse_min_gain_db`` (coarse) or ``min_gain_db`` (collage); ``*_false_hole_frac``, holes
  where nothing changed (outside ``R``), as a fraction of the frame, at most
  ``max_false_hole_frac`` (holes belong where something disoccludes, which is inside the
  changed region); what it draws wrong (holes aside) at most
  ``max_unexplained_frac`` of the changed region, ``max_unexplained_part_frac`` of any one
  changed part (a component of ``R``), and no connected wrong piece above
  ``max_unexplained_piece_frac`` of the frame. Before those rules, a collage piece that draws most
  of what changed under it wrong becomes a hole there (``collage_piece_max_wrong``).
* **drags** (signal): a drag is valid when its handle and its target both lie in ``R`` (on
  something that moves), it is at least ``drag_min_len_px`` long, the source patch at the
  handle agrees with the target patch at the target (NCC >= ``drag_min_ncc``), and the pixels
  under both ends changed in place (``drag_end_min_change``). Invalid drags are removed; fewer
  than ``min_drags`` valid ones drop the signal.
* **sketch** (signal): at least one stroke, and at least ``sketch_min_on_change`` of the stroke
  pixels on what changed (``R`` dilated by the stroke width). Strokes not next to content seen to
  move are erased, then the dots that leaves (``sketch_min_stroke_px``), and pieces that look
  like the still background (``sketch_lookalike_frac``).
* **region drags** (signal): regions with less than ``region_min_on_change`` of their mask in
  ``R``, or whose mask moved by their transform does not land on ``R`` or explains the target no
  better than ``region_max_error_ratio`` times the region left in place (in grey levels, and in
  grey levels normalised per side: a still surface whose exposure changed is no move), or whose flow is
  forward-backward consistent on less than ``region_min_consistent`` of the mask, or that cover
  less than ``region_min_area`` of the frame or move less than ``min_motion_px``, or whose mask
  turned about its centroid before its transform matches the target clearly better
  (``region_turn_ratio``: a turn the transform misses), are removed;
  none left drops the signal.

A failed pair rule rejects the pair (stage ``quality``, its reason, the numbers in the detail). A
failed signal rule drops that signal (``drop_signals: true``; the rejects table gets a
``signal``-level row naming it) and the pair is written with the signals that pass, or rejected
(``no_valid_signal``) when none does; ``drop_signals: false`` rejects the pair instead. Every
score goes into ``meta["quality"]`` and the index (``q_*`` columns); ``meta["signals"]`` lists
what the sample carries (the encoder writes it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Optional

import cv2
import numpy as np

from vid2pair.core.items import Item, PairItem
from vid2pair.core.spec import frame_scale, knob, scaled
from vid2pair.core.stage import PairStage, drop_signal, pair_reject
from vid2pair.ops.image import to_gray
from vid2pair.stages.evidence import (
    changed_mask,
    coherent_matches,
    compensate_exposure,
    fb_consistent,
    in_mask,
    largest_component,
    object_region,
    residual,
    solid_change,
    sparse_matches,
    still_support,
    textured,
    worst_part,
)

__all__ = ["QualityConfig", "QualityStage", "judge"]


#: the scores of the pair rules and the dense-flow rules :func:`judge` writes into ``meta["quality"]``
#: (the index has each as ``q_<name>``); each signal's judge adds those its signal declares
#: (:attr:`vid2pair.core.stage.Signal.scores`)
SCORES = {
    "changed_frac": "float64",
    "exposure_explained": "float64",
    "camera_shift_px": "float64",
    "changed_frac_aligned": "float64",
    "solid_frac": "float64",
    "motion_px": "float64",
    "moving_matches": "int64",
    "motion_ratio": "float64",
    "moving_frac": "float64",
    "fb_consistent": "float64",
    "unexplained_frac": "float64",
    "unexplained_blob_frac": "float64",
    "unexplained_part_frac": "float64",
    "orphan_blob_frac": "float64",
}


@dataclass
class QualityConfig:
    """Judge every signal against the pair's own images; reject or drop what is wrong (docs/quality.md)."""

    enabled: bool = knob(True, "the quality stage (scores into meta.json and the index; rejects with stage quality)")
    change_thresh: float = knob(
        15.0,
        "a pixel changed when the blurred source and target differ by more than this in some channel",
        unit="grey",
        gt=0,
    )
    blur_sigma: float = knob(1.5, "Gaussian blur before the change test", unit="px@512", ge=0)
    min_changed_frac: float = knob(
        0.003, "pair rule: fewer changed pixels than this fraction: no_visible_change", unit="frac", ge=0, le=1
    )
    max_changed_frac: Optional[float] = knob(
        0.85,
        "pair rule: more changed pixels than this fraction: global_change "
        "(a cut, a title card, a fade; hands or a body filling half the "
        "frame are local motion, not this)",
        unit="frac",
        ge=0,
        le=1,
    )
    lighting_min_changed_frac: float = knob(
        0.2,
        "pair rule: when at least this fraction changed and a gain / offset "
        "of the colours explains half of it: global_change (a lighting or "
        "exposure change); a smaller exposure drift is taken out before "
        "the change is measured",
        unit="frac",
        ge=0,
        le=1,
    )
    max_camera_shift_px: Optional[float] = knob(
        2.0,
        "pair rule: the background (corners off the moving objects) "
        "moved by more than this between source and target: "
        "camera_moved (a shake the shot-level test missed); null: off",
        unit="px@512",
        ge=0,
    )
    solid_radius_px: float = knob(
        6.0,
        "the disc a change is opened by to count as solid (a thing moved into place), not an outline, flicker or noise",
        unit="px@512",
        ge=0,
    )
    min_solid_frac: float = knob(
        0.002,
        "pair rule: the largest solid changed region smaller than this fraction of "
        "the frame: no_visible_change (a subject standing still, swaying leaves: "
        "slivers and specks, no thing moved into place)",
        unit="frac",
        ge=0,
        le=1,
    )
    min_solid_share: float = knob(
        0.05,
        "pair rule: the largest solid changed region smaller than this share of "
        "what changed: no_visible_change (a change scattered over foliage, water or "
        "rain, with no thing moved into place; measured: 0.006-0.017 on a tree in "
        "the wind, 0.24-0.8 on people, hands, animals and cars)",
        unit="frac",
        ge=0,
        le=1,
    )
    min_motion_px: float = knob(
        8.0,
        "pair rule: the changed content must move at least this (p90 of the flow on the "
        "solid change), or two sparse, verified matches must: else no_visible_motion",
        unit="px@512",
        ge=0,
    )
    min_motion_ratio: float = knob(
        0.05,
        "pair rule: that move, over the square root of the changed region's area, "
        "below this: no_visible_motion (leaves or a whole tree swaying a few px)",
        ge=0,
    )
    moving_px: float = knob(1.0, "a pixel moves when its flow exceeds this", unit="px@512", ge=0)
    min_fb_consistent: Optional[float] = knob(
        0.3,
        "flow rule: forward-backward consistent share of the moving "
        "pixels below this: the signals made from the dense flow (flow, "
        "sketch, coarse, collage, region drags) are dropped as "
        "flow_inconsistent (needs flow_bwd); null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    max_unexplained_frac: Optional[float] = knob(
        0.2,
        "flow rule: share of the changed region the source warped by "
        "the flow does not explain above this: the signals made from "
        "it are dropped as flow_unexplained; null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    max_unexplained_blob_frac: Optional[float] = knob(
        0.005,
        "pair rule: a changed region, as a fraction of the frame, "
        "mostly unexplained and with no correspondence at all (no "
        "consistent flow, no sparse match) above this: "
        "unmatched_change (something appears or disappears); null: "
        "off",
        unit="frac",
        ge=0,
        le=1,
    )
    max_flow_unexplained_part_frac: Optional[float] = knob(
        0.5,
        "flow rule: share of one changed part (a component of the changed region covering at least "
        "0.2 % of the frame) that the flow leaves unexplained above this: the signals made from it are "
        "dropped as flow_unexplained (one walker among several that the flow did not follow: 0.62 on vtest "
        "669->681, where the written flows are at most 0.36); null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    min_gain_db: float = knob(
        8.0,
        "collage rule: PSNR gain over no edit on the changed, covered pixels. A collage that leaves "
        "cars, a walker, a shirt or a bottle cap where they were gains 2.3-7.5 dB; the collages "
        "reviewers found right gain 9-19 dB (the coarse edit has its own, coarse_min_gain_db)",
        unit="dB",
    )
    collage_piece_max_wrong: Optional[float] = knob(
        0.6,
        "collage rule: a pasted piece (segment) of which at least this share of the changed, drawn "
        "pixels differ from the target (and at least collage_piece_min_wrong_frac of the frame) "
        "becomes a hole before the other collage rules: a forearm carried with the body while the "
        "target raised it (0.77, 0.89), floor pasted over a mouse's head (0.94); null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    collage_piece_min_wrong_frac: float = knob(
        0.0004,
        "collage rule: the fewest wrong pixels (share of the frame) that make a piece a hole under "
        "collage_piece_max_wrong (31 px at 320x240)",
        unit="frac",
        ge=0,
    )
    coarse_min_gain_db: float = knob(
        8.0,
        "coarse rule: the coarse edit is the source warped by a dense flow; where "
        "that flow is right it draws the target on the changed, covered pixels "
        "(13-27 dB over no edit on real pairs right by eye), where it ghosts a car "
        "or leaves a cup away from the mouth it gains 2.6-7 dB",
        unit="dB",
    )
    flow_needs_coarse_gain: bool = knob(
        True,
        "flow rule: the dense flow signals (flow, flow_bwd) are dropped as flow_no_gain when the coarse "
        "edit, the source warped by the flow, gains less than coarse_min_gain_db (needs the coarse edit)",
    )
    max_false_hole_frac: float = knob(
        0.03, "coarse / collage rule: holes where nothing changed, fraction of the frame", unit="frac", ge=0, le=1
    )
    max_hole_ratio: float = knob(
        0.75,
        "coarse / collage rule: holes / changed area; what disoccludes is at most "
        "where something was (about half the changed area for a moving object)",
        ge=0,
    )
    min_drags: int = knob(2, "drag rule: fewer valid drags than this drop the drag signal", ge=1)
    drag_min_len_px: float = knob(8.0, "drag rule: shorter drags are no visible move", unit="px@512", ge=0)
    drag_min_ncc: float = knob(
        0.5,
        "drag rule: the 11x11 patch NCC of handle (source) and target (target) below "
        "this: the drag does not follow the content",
        ge=-1,
        le=1,
    )
    track_lookalike_px: Optional[float] = knob(
        25.0,
        "tracks rule: a moving track whose target point looks like still background within this "
        "distance (a 5x5 patch of the same mean colour, within track_lookalike_grey, and contrast) "
        "is hidden: carpet seen through a dog's curled tail, pavement beside a walker, a table edge "
        "beside a bottle were tracked along with the mover 12-20 px, and nothing in the images "
        "shows they were not that background. null: off",
        unit="px@240",
        gt=0,
    )
    track_lookalike_grey: float = knob(
        10.0, "tracks rule: the colour difference (per channel) under which a patch looks alike", unit="grey", ge=0
    )
    drag_still_margin: float = knob(
        1.0,
        "drag rule: the mean grey difference of the handle's source patch and the target's patch "
        "at the target (11x11) must be under this times the smaller of the two in-place ones (the "
        "target's patch at the handle, the source's patch at the target): the content moved there "
        "rather than staying put at either end. Below 1 asks for a clear win: 0.6 removes drags "
        "from fingers at a hat's brim into the still hat (0.61, 0.69), and also about a fifth of the "
        "right drags, on cars that shrink as they drive off (0.81)",
        gt=0,
        le=1,
    )
    drag_end_min_change: float = knob(
        6.0,
        "drag rule: the mean colour difference of source and target in place over the 3x3 pixels "
        "under each end of a drag must reach this: the content left the handle and reached the "
        "target. Still pavement beside a walker's feet reads 5 (a handle there claimed the "
        "pavement moved 11 px); a red jacket over sand of its brightness 6.7. 0 turns it off",
        unit="grey",
        ge=0,
    )
    drag_tear_reach_px: float = knob(
        36.0,
        "drag rule: two valid drags whose handles are closer than this and whose moves differ by "
        "more than 16 px@512 plus twice the handles' distance both go: what lies between them would "
        "tear (a drag from a walker's hip onto a woman passing him, 16 px@240 below the drag that took "
        "his head along, 55 px the other way). 0: off",
        unit="px@512",
        ge=0,
    )
    sketch_min_on_change: float = knob(
        0.6, "sketch rule: share of stroke pixels on what changed", unit="frac", ge=0, le=1
    )
    sketch_min_verified: float = knob(
        0.5,
        "sketch rule: share of stroke pixels next to moving target content whose "
        "flow the forward flow undoes (needs flow_bwd): the strokes outline a "
        "verified move, not flow noise",
        unit="frac",
        ge=0,
        le=1,
    )
    sketch_erase_unverified: bool = knob(
        True,
        "sketch rule: erase the stroke pixels that are not next to verified moving target content "
        "that is textured, matched better moved than in place and by an edge the target has and the "
        "source has not (flow noise where a mover left, on a floor, a road, a wall that darkened, the "
        "outline where an arm used to be), then the pieces shorter than 10 stroke widths (needs flow_bwd)",
    )
    sketch_lookalike_frac: Optional[float] = knob(
        0.75,
        "sketch rule: a stroke piece (8-connected) of which at least this share of the pixels look "
        "like the still background within track_lookalike_px (5x5 mean colour within "
        "sketch_lookalike_grey, contrast within 3) is erased: an edge the target has where a mover "
        "used to be, or of swaying leaves, is background, not an outline of what moved; null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    sketch_lookalike_grey: float = knob(
        6.0, "sketch rule: the colour tolerance of sketch_lookalike_frac", unit="grey", gt=0
    )
    sketch_min_stroke_px: float = knob(
        21.0,
        "sketch rule: a stroke piece left by the erasing (sketch_erase_unverified) whose centre line "
        "is shorter than this is erased too: a dot one stroke width across outlines nothing (10 px "
        "at 240 px high, as sketch.min_component_px); 0: off",
        unit="px@512",
        ge=0,
    )
    region_min_on_change: float = knob(
        0.5, "region rule: share of a region's mask on what changed", unit="frac", ge=0, le=1
    )
    region_max_error_ratio: float = knob(
        0.8,
        "region rule: the mean grey difference between a region's pixels "
        "moved by its transform and the target there, at most this times "
        "that of the region left in place, in grey levels and in grey levels "
        "normalised per side (an exposure change is no move); and the moved "
        "region lands on what changed (region_min_on_change)",
        ge=0,
    )
    region_min_area: float = knob(
        0.002,
        "region rule: a region smaller than this fraction of the frame (a speck of "
        "floor, a sliver at the frame's edge) is removed; and so is one that moves "
        "less than min_motion_px (a still head, hair, a shirt's print)",
        unit="frac",
        ge=0,
        le=1,
    )
    region_min_consistent: float = knob(
        0.5,
        "region rule: share of a region's mask whose flow the backward "
        "flow undoes (needs flow_bwd); a halo of plain background that the "
        "flow leaked onto around an object is not",
        unit="frac",
        ge=0,
        le=1,
    )
    max_unexplained_piece_frac: Optional[float] = knob(
        0.01,
        "coarse edit / collage rule: the largest connected piece the edit draws wrong on what changed "
        "(holes aside), as a share of the frame, above this: the edit is dropped (a finger entering "
        "the frame filled with the sky it covers, a face left where it was while the person leaned "
        "in). null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    max_unexplained_part_frac: Optional[float] = knob(
        0.35,
        "coarse edit / collage rule: share of one changed part (a component of the changed region "
        "covering at least 0.2 % of the frame: one walker among several) that the edit draws wrong, "
        "holes aside, above this: the edit is dropped (a walker cut out and not pasted, legs left "
        "behind on the grass), however small that part is against the whole change. null: off",
        unit="frac",
        ge=0,
        le=1,
    )
    region_turn_ratio: float = knob(
        0.7,
        "region rule: a region whose source mask, first turned about its centroid by a multiple of "
        "30 degrees and then moved by its transform, matches the target with at most this times the "
        "grey error (normalised per side) of its transform alone has a turn its transform misses (a "
        "mouse that turned round, fitted as a shift): removed. 0: off",
        ge=0,
        le=1,
    )
    drop_signals: bool = knob(
        True,
        "a failed signal rule drops that signal and keeps the pair (if any signal is left); false: it rejects the pair",
    )


def _splat_explanation(src: np.ndarray, tgt: np.ndarray, flow: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The source splatted along the flow (soft, Magic Fixup metric) and its holes (density <= 0.5)."""
    from vid2pair.stages.coarse import coarse_edit

    img, holes, _ = coarse_edit(src, flow, "soft", tgt=tgt)
    return img, holes > 0


class _Pair:
    """What :func:`judge` measures once and every rule reads."""

    def __init__(self, it: PairItem, c: QualityConfig):
        a = it.arrays
        self.src, self.tgt = a["src"], a["tgt"]
        h, w = self.src.shape[:2]
        self.h, self.w = h, w
        self.s = frame_scale((h, w))  # stored px per px@512
        self.c = c
        self.sigma = self.px("blur_sigma")
        self.flow = a.get("flow")
        self.bwd = a.get("flow_bwd")
        self.given_matches = a.get("matches")
        #: ``(reason, detail)`` when the dense flow does not hold (set by the flow rules)
        self.flow_verdict: Optional[tuple[str, str]] = None
        self._still_bg: Optional[np.ndarray] = None

    def still_background(self) -> np.ndarray:
        """``True`` where a fixed camera's pixels stay still (not
        :func:`~vid2pair.stages.evidence.still_support`), computed once for the judges that read it
        (the tracks' and the sketch's look-alike rules)."""
        if self._still_bg is None:
            self._still_bg = ~still_support(self.src, self.tgt)
        return self._still_bg

    def px(self, name: str) -> float:
        """Quality knob ``name`` (a px@512 length) in this pair's pixels."""
        return scaled(self.c, name, (self.h, self.w))

    def changed(self, source: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """C and R of ``source`` against the target (see the module docstring)."""
        s, c = self.s, self.c
        C = changed_mask(source, self.tgt, c.change_thresh, self.sigma)
        return C, object_region(C, close_px=max(1, int(round(3 * s * 2))), dilate_px=max(1, int(round(2 * s * 2))))


def _pair_rules(p: _Pair, sc: dict) -> Optional[tuple[str, str]]:
    """The rules that decide whether the pair is an edit at all: a visible, local change of a fixed
    scene, with something in it that moves. Sets ``p.C``, ``p.R``, ``p.solid`` (on the source
    aligned and exposure-compensated onto the target) and scores; returns a failed rule or None."""
    c, s, src, tgt = p.c, p.s, p.src, p.tgt
    C0, _ = p.changed(src)
    sc["changed_frac"] = round(float(C0.mean()), 5)
    if c.max_changed_frac is not None and sc["changed_frac"] > c.max_changed_frac:
        return "global_change", (
            f"changed_frac {sc['changed_frac']:.3f} > {c.max_changed_frac}: nearly all of the "
            f"frame changed (a cut, a title card, a fade)"
        )
    comp, exposure = compensate_exposure(src, tgt)
    sc["exposure_explained"] = exposure
    C, R = p.changed(comp) if comp is not src else (C0, p.changed(src)[1])
    if sc["changed_frac"] >= c.lighting_min_changed_frac and C.mean() < 0.5 * C0.mean():
        return "global_change", (
            f"a gain / offset of the colours explains {1 - C.mean() / C0.mean():.0%} of the "
            f"{sc['changed_frac']:.2f} changed: a lighting or exposure change, not an edit"
        )
    if c.max_camera_shift_px is not None:
        from vid2pair.stages.static_camera import pair_camera_fit

        shift, _, cam = pair_camera_fit(to_gray(comp), to_gray(tgt))
        sc["camera_shift_px"] = None if shift is None else round(shift, 3)
        lim = p.px("max_camera_shift_px")
        if shift is not None and shift > lim:
            return "camera_moved", (f"the background moved {shift:.2f} px between source and target (> {lim:.2f} px)")
        if cam is not None:
            # a camera shake below the limit still changes every strong edge by a pixel: what changed
            # is measured against the source aligned onto the target, so that strokes, handles and
            # regions on a still edge do not count as lying on what changed
            comp = cv2.warpAffine(comp, cam, (p.w, p.h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            C, R = p.changed(comp)
            sc["changed_frac_aligned"] = round(float(C.mean()), 5)
    p.C, p.R = C, R
    p.comp = comp  # the source, exposure (and a small camera shake) fitted to the target
    if C.mean() < c.min_changed_frac:
        return "no_visible_change", (
            f"changed_frac {C.mean():.4f} < {c.min_changed_frac} (pixels differing by > "
            f"{c.change_thresh:g} grey levels" + (", exposure and camera shake taken out)" if comp is not src else ")")
        )
    p.solid = solid_change(C, max(1, int(round(p.px("solid_radius_px")))))
    sc["solid_frac"] = round(largest_component(p.solid) / float(p.h * p.w), 5)
    if sc["solid_frac"] < c.min_solid_frac:
        return "no_visible_change", (
            f"solid_frac {sc['solid_frac']:.4f} < {c.min_solid_frac}: no solid changed region "
            f"(only thin outlines, specks, flicker or noise: a still subject, swaying "
            f"leaves), nothing moved into place"
        )
    if sc["solid_frac"] < c.min_solid_share * C.mean():
        return "no_visible_change", (
            f"the largest solid changed region ({sc['solid_frac']:.4f} of the frame) is "
            f"{sc['solid_frac'] / C.mean():.3f} of what changed ({C.mean():.3f}; < "
            f"{c.min_solid_share}): a change scattered over foliage, water or rain, no thing "
            f"moved into place"
        )
    # something moves visibly: the flow on the solid change, or sparse matches a dense flow may miss
    mags = [np.hypot(f[..., 0], f[..., 1])[p.solid] for f in (p.flow, p.bwd) if f is not None]
    sc["motion_px"] = round(max((float(np.percentile(m, 90)) for m in mags if m.size), default=0.0), 3)
    if p.given_matches is not None:  # verified through the frames in between by the track stage
        m = np.asarray(p.given_matches, np.float32).reshape(-1, 4)
    else:
        region = cv2.dilate(R.astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        m = coherent_matches(
            sparse_matches(src, tgt, region, min_ncc=c.drag_min_ncc),
            p.flow,
            radius=max(8.0, 40.0 * s * 2),
            tol_px=3.0 * s * 2,
        )
    move = np.linalg.norm(m[:, 2:] - m[:, :2], axis=1) if len(m) else np.zeros(0)
    on = (in_mask(R, m[:, :2]) & in_mask(R, m[:, 2:])) if len(m) else np.zeros(0, bool)
    min_px = p.px("min_motion_px")
    p.matches = m[on & (move >= min_px)]
    sc["moving_matches"] = int(len(p.matches))
    if sc["motion_px"] < min_px and len(p.matches) < 2:
        return "no_visible_motion", (
            f"the changed content moves {sc['motion_px']:.2f} px (p90 of the flow on it) and "
            f"{len(p.matches)} sparse match(es) move >= {min_px:.1f} px: a "
            f"change without a visible move (flicker, shimmer, a subject that barely moves)"
        )
    # ... and by a visible part of its own size: a tree swaying a few px over its whole crown is not an edit
    moved = max(sc["motion_px"], float(np.median(move[on])) if on.any() else 0.0)
    sc["motion_ratio"] = round(moved / max(1.0, float(np.sqrt(R.sum()))), 4)
    if sc["motion_ratio"] < c.min_motion_ratio:
        return "no_visible_motion", (
            f"the changed region ({R.mean():.2f} of the frame) moves {moved:.1f} px, "
            f"{sc['motion_ratio']:.3f} of its size (< {c.min_motion_ratio}): a sway, not an "
            f"edit"
        )
    return None


def _flow_rules(p: _Pair, it: PairItem, sc: dict, sig_fail: dict) -> Optional[tuple[str, str]]:
    """Does the dense flow hold: forward-backward consistent on the moving content, and the source
    warped by it explaining the changed target? When not, the signals made from it are dropped (the
    sparse, verified ones stay). A changed region without any correspondence (no consistent flow, no
    sparse match: something appears or disappears) is not an edit: returns that pair rule."""
    a, c, s, src, tgt, C, R = it.arrays, p.c, p.s, p.src, p.tgt, p.C, p.R
    h, w = p.h, p.w
    flow, bwd = p.flow, p.bwd
    mpx = p.px("moving_px")
    moving = R & (np.hypot(flow[..., 0], flow[..., 1]) > mpx)
    sc["moving_frac"] = round(float(moving.mean()), 5)
    tex = textured(src)
    p.tex = tex
    p.vf = p.vb = None
    if bwd is not None:
        vf = np.asarray(a["flow_valid"], bool) if "flow_valid" in a else fb_consistent(flow, bwd)
        vb = np.asarray(a["flow_bwd_valid"], bool) if "flow_bwd_valid" in a else fb_consistent(bwd, flow)
        p.vf, p.vb = vf, vb
        observable = moving & tex  # a flow on a plain surface can be neither checked nor seen
        sc["fb_consistent"] = round(float(vf[observable].mean()), 4) if observable.sum() >= 20 else None
        # a changed pixel is explained when it holds moving content that the flows follow consistently,
        # on the source (where something left) or on the target (where it arrived)
        moving_b = R & (np.hypot(bwd[..., 0], bwd[..., 1]) > mpx)
        p.verified_tgt = vb & moving_b
        explained = (vf & moving) | (vb & moving_b)
        r = max(1, int(round(4 * s)))
        explained = cv2.dilate(explained.astype(np.uint8), np.ones((2 * r + 1, 2 * r + 1), np.uint8)) > 0
    else:
        sc["fb_consistent"] = None
        explained = np.ones_like(C)
    # ... and the source warped by that flow must look like the target there (holes aside: what
    # disoccludes has no source); a consistent but wrong flow (new text matched to old) fails here
    if "coarse" in a and "coarse_mask" in a:
        expl, holes = a["coarse"], a["coarse_mask"] > 0
    else:
        expl, holes = _splat_explanation(src, tgt, flow)
    photo_bad = residual(expl, tgt, c.change_thresh, p.sigma) & ~holes
    tex_tgt = textured(tgt)
    # plain on both sides, the flows cannot be checked there: the warped source matching decides
    explained |= ~tex & ~tex_tgt & ~holes & ~photo_bad
    # a hole is a disocclusion where the source held (textured) content that moved away; textured
    # target content in a hole where the source was plain came from nowhere (new text, an object
    # entering over a plain desk)
    appeared = holes & tex_tgt & ~cv2.dilate(tex.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
    raw_bad = C & (~explained | photo_bad | appeared)
    bad = cv2.morphologyEx(raw_bad.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8)) > 0
    sc["unexplained_frac"] = round(float(bad.sum() / max(1, C.sum())), 4)
    sc["unexplained_blob_frac"] = round(largest_component(bad) / float(h * w), 5)
    sc["unexplained_part_frac"] = worst_part(bad, C, R)
    # the changed regions (R's components: an object, a block of text) that are mostly unexplained and
    # that no sparse, verified match lands in or leaves
    n_lab, lab = cv2.connectedComponents(R.astype(np.uint8), connectivity=8)
    worst = 0
    if n_lab > 1:
        area = np.bincount(lab[C], minlength=n_lab)
        unexp = np.bincount(lab[raw_bad], minlength=n_lab)  # thin strokes (new text) count here

        def comp(pts) -> np.ndarray:
            return lab[
                np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1), np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
            ]

        # two verified matches at least land in or leave the region: one point of background that an
        # entering object's edge pushed along is no correspondence of the object
        a_, b_ = comp(p.matches[:, :2]), comp(p.matches[:, 2:])
        hits = np.bincount(a_, minlength=n_lab) + np.bincount(b_[b_ != a_], minlength=n_lab)
        matched = hits >= 2
        # a deforming thing keeps a few verified correspondences; something that enters, leaves or appears
        # has none. The dense flow and the tracker built on it are no evidence here: they latch onto the
        # background texture (a wooden floor, a wall) where the thing was not
        edge = np.zeros(n_lab, bool)  # at the frame's border: entering or leaving
        edge[np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))] = True
        share = unexp / np.maximum(area, 1)
        orphan = ((share >= 0.5) | (edge & (share >= 0.3))) & ~matched & (np.arange(n_lab) > 0)
        p.components = {"area": area, "unexplained": unexp, "matched": matched}
        worst = int(area[orphan].max()) if orphan.any() else 0
    sc["orphan_blob_frac"] = round(worst / float(h * w), 5)
    if c.max_unexplained_blob_frac is not None and sc["orphan_blob_frac"] > c.max_unexplained_blob_frac:
        return "unmatched_change", (
            f"a changed region of {sc['orphan_blob_frac']:.4f} of the frame has no "
            f"correspondence (> {c.max_unexplained_blob_frac}: the flow does not explain it, "
            f"no sparse match lands in it): something appears or disappears"
        )
    why = None
    fb = sc["fb_consistent"]
    if c.min_fb_consistent is not None and fb is not None and fb < c.min_fb_consistent:
        why = (
            "flow_inconsistent",
            f"fb_consistent {sc['fb_consistent']:.3f} < {c.min_fb_consistent} on "
            f"{int((moving & tex).sum())} moving, textured pixels",
        )
    elif c.max_unexplained_frac is not None and sc["unexplained_frac"] > c.max_unexplained_frac:
        why = (
            "flow_unexplained",
            f"unexplained_frac {sc['unexplained_frac']:.3f} > {c.max_unexplained_frac}: the "
            f"source warped by the flow does not explain the changed target",
        )
    elif (
        c.max_flow_unexplained_part_frac is not None and sc["unexplained_part_frac"] > c.max_flow_unexplained_part_frac
    ):
        why = (
            "flow_unexplained",
            f"the flow leaves {sc['unexplained_part_frac']:.2f} of one changed part unexplained "
            f"(> {c.max_flow_unexplained_part_frac}): one mover among several that it does not follow",
        )
    if why:
        p.flow_verdict = why  # the dense flow signals' judges (vid2pair.stages.flow.judge_dense_flow) read it
    return None


def judge(
    it: PairItem, c: QualityConfig, judges: Iterable[tuple[str, Optional[Callable]]] = ()
) -> tuple[dict, list[tuple[str, str]], dict[str, tuple[str, str]]]:
    """Scores, failed pair rules ``[(reason, detail)]`` and failed signal rules
    ``{signal: (reason, detail)}`` of one pair. The pair rules and the dense flow's rules are this
    module's; each signal's rules are its own ``judges``: ``(name, Signal.judge)`` of the signals
    the pair may carry (:func:`vid2pair.pipeline.plan.signal_judges`), which may also filter its
    members in place (drags, region drags)."""
    p = _Pair(it, c)
    sc: dict[str, Any] = {}
    sig_fail: dict[str, tuple[str, str]] = {}
    p.matches = np.zeros((0, 4), np.float32)
    fail = _pair_rules(p, sc)
    if fail is None:
        fail = _flow_rules(p, it, sc, sig_fail)
    if fail is not None:
        return sc, [fail], sig_fail
    for _, judge_signal in judges:  # each signal's own rules (Signal.judge, in its stage's module)
        if judge_signal is not None:
            judge_signal(p, it, sc, sig_fail)
    return sc, [], sig_fail


class QualityStage(PairStage):
    """Judges every pair's signals against its own images (see the module docstring)."""

    name = "quality"
    sections = {"quality": QualityConfig}
    # what its pair and dense-flow rules read; each signal's judge reads that signal's own members
    # (the plan hands the judges over in :meth:`build`); the flow rules take the coarse edit, where
    # the pair has one, as the flow's forward warp instead of splatting the source again
    reads = ("src", "tgt", "flow", "flow_bwd", "coarse", "coarse_mask", "matches", "flow_valid", "flow_bwd_valid")

    @classmethod
    def build(cls, cfg, upstream=()):
        # each signal with a judge, from the stages before this one, and the arrays / meta entries it is made of
        keys: dict[str, list[tuple[str, str]]] = {}
        judges: dict[str, Callable] = {}
        for S in upstream:
            by_member = {m.name: m for m in S.writes}
            for sig in S.signals:
                if sig.judge is None:
                    continue
                judges[sig.name] = sig.judge
                if sig.matches is not None:
                    # matching attention's correspondences (the tracks) ride along with an edit: judged
                    # (filtered in place), never dropped, and never what makes a pair worth writing
                    continue
                if cfg.output.flow == "none" and any(n not in by_member for n in sig.members):
                    continue  # the encoder's own members (flow.npy): not written, nothing to drop
                keys[sig.name] = [
                    (by_member[n].key, by_member[n].codec)
                    if n in by_member
                    else (n.rsplit(".", 1)[0], "npy")  # flow.npy: the encoder writes arrays["flow"]
                    for n in sig.members
                ]
        return cls(cfg, keys, judges)

    @classmethod
    def index_columns(cls, meta: dict) -> dict:
        q = meta.get("quality") or {}
        return {f"q_{k}": v for k, v in q.items() if isinstance(v, (int, float)) or v is None}

    index_schema = {f"q_{k}": t for k, t in SCORES.items()}

    @classmethod
    def index_types(cls, before: tuple = ()) -> dict[str, str]:
        """Its own scores, then those the signals of the stages before it declare (whatever a config enables)."""
        return {**cls.index_schema, **{f"q_{s.name}": s.dtype for S in before for g in S.signals for s in g.scores}}

    def __init__(self, cfg, signal_keys: Optional[dict] = None, judges: Optional[dict] = None):
        super().__init__(cfg)
        self.c: QualityConfig = cfg.quality
        self.signal_keys = signal_keys or {}
        self.judges: dict[str, Callable] = judges or {}

    def _carried(self, it: PairItem) -> list[str]:
        out = []
        for sig, keys in self.signal_keys.items():
            if keys and all((k in it.meta) if codec == "json" else (k in it.arrays) for k, codec in keys):
                out.append(sig)
        return out

    def _drop(self, it: PairItem, sig: str) -> None:
        for k, codec in self.signal_keys.get(sig, ()):
            (it.meta if codec == "json" else it.arrays).pop(k, None)

    def one(self, it: PairItem) -> Item:
        c = self.c
        had = self._carried(it)
        sc, pair_fail, sig_fail = judge(it, c, self.judges.items())
        it.meta["quality"] = sc
        if pair_fail:
            reason, detail = pair_fail[0]
            return pair_reject(it, self.name, reason, "; ".join(d for _, d in pair_fail)[:500])
        failed = [s for s in had if s in sig_fail]
        earlier = [r for r in it.meta.get("signal_rejects", ()) if r["signal"] in self.judges]
        if (failed or earlier) and not c.drop_signals:
            why = [f"{r['signal']}: {r['detail']}" for r in earlier] + [f"{s}: {sig_fail[s][1]}" for s in failed]
            reason = sig_fail[failed[0]][0] if failed else earlier[0]["reason"]
            return pair_reject(it, self.name, reason, "; ".join(why)[:500])
        if len(failed) == len(had) and (had or earlier):  # nothing left to train on
            why = [f"{r['signal']}: {r['reason']} ({r['stage']})" for r in earlier]
            why += [f"{s}: {sig_fail[s][1]}" for s in failed]
            return pair_reject(it, self.name, "no_valid_signal", "; ".join(why)[:500])
        for s in failed:  # the writer turns these into signal-level rows of the rejects table
            self._drop(it, s)
            drop_signal(it, self.name, s, sig_fail[s][0], sig_fail[s][1])
        return it
