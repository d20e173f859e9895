"""pairs: choose (source, target) frame pairs inside a shot, with per-clip seeded randomness.

Policies (``pairs.policy``):

* ``min_gap`` (FramePainter): dt >= ``min_gap_s`` (and <= ``max_gap_s``). The gap is drawn
  uniformly over the feasible gaps, then the source uniformly over the feasible starts.
* ``uniform_seconds`` (Magic Fixup paper): dt drawn uniformly from the integers
  ``uniform_min_s..uniform_max_s`` that fit in the shot.
* ``flow_advance`` (Magic Fixup released code): a start frame drawn in ``[0, advance_start_max)``
  of the shot, ``advance_frames`` frames spaced linearly from it to the end of the shot, and a
  random target-index guess in ``[1, min(len, advance_frames))``; the flow stage advances the
  target along the frames up to the guess while the (median-filtered) flow's p90 stays <=
  ``advance_max_p90`` (see :func:`advance_select`).

With probability ``reverse_prob`` source and target are swapped (time reversed).
Pure functions: numbers in, :class:`PairSpec` out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Callable, Literal, Optional

import cv2
import numpy as np

from vid2pair.core.spec import knob, need
from vid2pair.ops.image import to_gray


@dataclass
class PairsConfig:
    """Which (source, target) frames a static shot yields."""

    policy: Literal["min_gap", "uniform_seconds", "flow_advance"] = knob(
        "min_gap", "min_gap (FramePainter) | uniform_seconds (Magic Fixup paper) | flow_advance (Magic Fixup code)"
    )
    per_shot: int = knob(4, "pairs wanted per static shot", ge=1)
    oversample: float = knob(
        1.0,
        "candidate pairs drawn per static shot, at most per_shot x this: a candidate that a stage running with "
        "the decoder rejects (with the weight-free backends: every stage, the quality stage too) is replaced by "
        "the next draw until per_shot pairs came through; every draw is written or in the rejects table; "
        "1: no replacement",
        ge=1,
        le=20,
    )
    min_gap_s: float = knob(1.0, "min_gap: dt >= this", unit="s", gt=0)
    max_gap_s: Optional[float] = knob(None, "min_gap: dt <= this (null: up to the shot length)", unit="s", gt=0)
    uniform_min_s: int = knob(1, "uniform_seconds: dt drawn uniformly from the integers min..max", unit="s", ge=1)
    uniform_max_s: int = knob(10, "uniform_seconds: largest dt", unit="s", ge=1)
    reverse_prob: float = knob(
        0.0, "probability of swapping source and target (time reversal)", unit="frac", ge=0, le=1
    )
    max_attempts: int = knob(20, "draws per requested pair before giving up", ge=1)
    retry_shorter: int = knob(
        0,
        "a pair rejected for motion the estimates cannot follow (reasons in "
        "pairs.RETRY_REASONS) is tried again up to this many times, each at about half "
        "its dt (never below min_gap_s / uniform_min_s), from the frames already "
        "decoded; its reject stays in the table. min_gap / uniform_seconds only, "
        "stages that run with the decoder (all with weight-free backends); 0: off",
        ge=0,
        le=4,
    )
    prescreen: bool = knob(
        False,
        "draw prescreen_draws x more pairs and keep, in the order drawn, those whose "
        "source and target differ by a visible, local change on the scan's frames "
        "(shots.analysis_width, 128 px) "
        "(a solid changed area of at least prescreen_min_solid of the frame, at most "
        "prescreen_max_changed changed): the stages then spend the CPU where good pairs "
        "can exist; min_gap / uniform_seconds only",
    )
    prescreen_draws: int = knob(6, "prescreen: draws per candidate wanted (per_shot x oversample)", ge=1, le=50)
    prescreen_min_solid: float = knob(
        0.002,
        "prescreen: the changed area that survives a 3x3 opening at 128 px "
        "(slivers of a still subject's outline, swaying leaves and sensor "
        "noise do not) must cover at least this fraction of the frame "
        "(quality.min_solid_frac's bar: no stricter than the judge)",
        unit="frac",
        ge=0,
        le=1,
    )
    prescreen_max_changed: float = knob(
        0.6,
        "prescreen: more changed than this fraction of the frame: a cut, a fade or a lighting change, not an edit",
        unit="frac",
        ge=0,
        le=1,
    )
    min_separation_s: float = knob(
        0.0,
        "diversity: a candidate whose source and target both lie within this of "
        "an earlier candidate's of the same shot is not drawn (0: off)",
        unit="s",
        ge=0,
    )
    advance_frames: int = knob(
        20,
        "flow_advance: frames spaced linearly from the start to the end of the shot "
        "(the start and its candidate targets)",
        unit="frames",
        ge=2,
    )
    advance_start_max: int = knob(
        20, "flow_advance: the start is a random frame in [0, this) of the shot", unit="frames", ge=1
    )
    advance_max_p90: float = knob(300.0, "flow_advance: advance while the flow p90 stays <= this", unit="px", ge=0)
    advance_first_min_p90: float = knob(1.0, "flow_advance: drop when p90 < this at the first step", unit="px", ge=0)
    advance_step5_min_p95: float = knob(20.0, "flow_advance: drop when p95 < this at step 5", unit="px", ge=0)
    advance_final_min_p95: float = knob(
        50.0, "flow_advance: drop when p95 < this at the step before the target", unit="px", ge=0
    )

    def check(self, prefix: str = "pairs") -> None:
        need(
            self.max_gap_s is None or self.max_gap_s >= self.min_gap_s,
            f"{prefix}.max_gap_s",
            f"must be >= {prefix}.min_gap_s ({self.min_gap_s})",
        )
        need(
            self.uniform_max_s >= self.uniform_min_s,
            f"{prefix}.uniform_max_s",
            f"must be >= {prefix}.uniform_min_s ({self.uniform_min_s})",
        )


@dataclass
class PairSpec:
    src: int
    tgt: int
    reversed: bool = False
    sequence: list = field(default_factory=list)  # flow_advance: candidate target frames, in order
    guess: int = 0  # flow_advance: the random target-index guess (1-based index into sequence + 1)

    @property
    def frames(self) -> tuple[int, int]:
        return self.src, self.tgt


#: rejects a shorter gap may cure: the object moved too far or out of sight for the flow to follow
RETRY_REASONS = frozenset({"unmatched_change", "flow_inconsistent", "motion_too_large", "no_valid_signal"})


def shorter_target(indices: list[int], fps: float, cfg) -> Optional[int]:
    """For a pair decoded as frames ``indices`` (source first, target last, evenly spaced between),
    the position among them of the target of its retry: about half the gap, at least the policy's
    smallest gap; None when no such frame is left (or the policy has no gap to shorten)."""
    if cfg.policy == "min_gap":
        gmin = int(math.ceil(cfg.min_gap_s * fps - 1e-9))
    elif cfg.policy == "uniform_seconds":
        gmin = int(round(cfg.uniform_min_s * fps))
    else:
        return None
    gaps = [abs(i - indices[0]) for i in indices]
    want = max(gmin, gaps[-1] // 2)
    ok = [j for j in range(1, len(indices) - 1) if gmin <= gaps[j] < gaps[-1]]
    if not ok:
        return None
    return min(ok, key=lambda j: (abs(gaps[j] - want), j))


def min_duration_s(cfg) -> float:
    """Smallest clip duration that can yield a pair under the policy."""
    if cfg.policy == "min_gap":
        return cfg.min_gap_s
    if cfg.policy == "uniform_seconds":
        return float(cfg.uniform_min_s)
    return 0.0  # flow_advance: any shot of two frames or more


def draws_per_shot(cfg) -> int:
    """Candidate pairs a shot may draw: ``per_shot`` x ``oversample`` (the spares replace rejected pairs)."""
    return max(cfg.per_shot, int(math.ceil(cfg.per_shot * cfg.oversample - 1e-9)))


def _drawer(
    start: int, end: int, fps: float, cfg, rng: np.random.Generator
) -> tuple[Optional[Callable[[], Optional[tuple]]], Optional[str]]:
    """The policy's draw of one candidate, ``() -> (src, tgt, sequence, guess)`` or None (nothing this
    time), or (None, the reason the shot has none)."""
    n = end - start
    if cfg.policy == "min_gap":
        gmin = int(math.ceil(cfg.min_gap_s * fps - 1e-9))
        gmax = n - 1 if cfg.max_gap_s is None else min(n - 1, int(math.floor(cfg.max_gap_s * fps + 1e-9)))
        if gmin > gmax:
            return None, f"shot of {n / fps:.2f} s has no gap >= {cfg.min_gap_s} s"

        def draw_min_gap() -> tuple:
            g = int(rng.integers(gmin, gmax + 1))
            a = start + int(rng.integers(0, n - g))
            return a, a + g, (), 0

        return draw_min_gap, None
    if cfg.policy == "uniform_seconds":
        secs = [s for s in range(cfg.uniform_min_s, cfg.uniform_max_s + 1) if round(s * fps) <= n - 1]
        if not secs:
            return None, f"shot of {n / fps:.2f} s is shorter than {cfg.uniform_min_s} s"

        def draw_uniform() -> tuple:
            g = int(round(secs[int(rng.integers(0, len(secs)))] * fps))
            a = start + int(rng.integers(0, n - g))
            return a, a + g, (), 0

        return draw_uniform, None
    if cfg.policy == "flow_advance":
        if n < 2:
            return None, f"shot of {n} frame(s): flow_advance needs two"

        def draw_advance() -> Optional[tuple]:
            # the released sampler: a random start in [0, 20), 20 frames spaced linearly from it to the
            # end, a random target-index guess in [1, min(len, 20)) (the target the advance may reach)
            a = start + int(rng.integers(0, min(cfg.advance_start_max, n - 1)))
            frames = list(dict.fromkeys(int(round(x)) for x in np.linspace(a, end - 1, cfg.advance_frames)))
            if len(frames) < 2:
                return None
            guess = int(rng.integers(1, min(len(frames), cfg.advance_frames))) if len(frames) > 2 else 1
            seq = frames[1 : guess + 1]
            return a, seq[-1], seq, guess

        return draw_advance, None
    raise ValueError(f"unknown pair policy {cfg.policy!r}")  # guarded by config validation


def sample_pairs(
    start: int, end: int, fps: float, cfg, rng: np.random.Generator, keep=None
) -> tuple[list[PairSpec], Optional[str]]:
    """Pairs inside ``[start, end)``. Returns (pairs, reason when none could be drawn).

    The first ``per_shot`` pairs are the ones to use, ordered by time; the rest, up to
    ``per_shot`` x ``oversample``, are spares in the order drawn, that replace rejected ones.
    The first ``per_shot`` are those drawn without spares whenever the shot has that many distinct pairs.

    ``keep(src, tgt) -> bool`` (the pre-screen, :func:`screen_pair`): with ``pairs.prescreen``,
    ``prescreen_draws`` x as many pairs are drawn and only those it keeps count, in the order drawn.
    With ``pairs.min_separation_s``, a pair whose ends both lie within that of an earlier pair's is
    not drawn (near-duplicates)."""
    want = draws_per_shot(cfg)
    screen = keep if (keep is not None and cfg.prescreen and cfg.policy != "flow_advance") else None
    budget = want * (cfg.prescreen_draws if screen is not None else 1)
    sep = int(round(cfg.min_separation_s * fps))
    drawn = 0
    out: list[PairSpec] = []
    seen: set = set()
    draw, why = _drawer(start, end, fps, cfg, rng)
    if draw is None:
        return [], why
    for _ in range(budget * cfg.max_attempts):
        if not (len(out) < want and drawn < budget):
            break
        d = draw()
        if d is None:
            continue
        a, b, seq, guess = d
        if rng.random() < cfg.reverse_prob:
            if seq:  # walk the same frames backwards: start at the last one, end at the first
                full = [a, *seq][::-1]
                a, seq, b = full[0], full[1:], full[-1]
            else:
                a, b = b, a
            rev = True
        else:
            rev = False
        if (a, b, guess) in seen:
            continue
        seen.add((a, b, guess))
        if sep and any(abs(a - p.src) <= sep and abs(b - p.tgt) <= sep for p in out):
            continue  # a near-duplicate of a pair already drawn
        drawn += 1
        if screen is not None and not screen(a, b):
            continue
        out.append(PairSpec(a, b, rev, list(seq), guess))
    if screen is not None and not out:
        return [], f"none of {drawn} pairs drawn shows a visible, local change (pairs.prescreen)"
    return sorted(out[: cfg.per_shot], key=lambda p: (min(p.src, p.tgt), p.tgt)) + out[cfg.per_shot :], None


def screen_frame(small_rgb: np.ndarray, width: int = 128) -> np.ndarray:
    """The pre-screen's view of a scanned frame: grey, at most ``width`` px wide, blurred (float32).
    (At 64 px a person drinking at 1/8 of a 1080p frame's width left no solid change.)"""
    h, w = small_rgb.shape[:2]
    width = min(width, w)
    g = to_gray(small_rgb)
    g = cv2.resize(g, (width, max(2, int(round(h * width / w)))), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(g.astype(np.float32), (0, 0), 0.8)


def screen_pair(a: np.ndarray, b: np.ndarray, cfg, thresh: float = 15.0) -> tuple[bool, dict]:
    """Whether two :func:`screen_frame` views differ by a visible, local change: a solid changed area
    (what survives a 3x3 opening: not the slivers along a still subject's outline, swaying leaves or
    sensor noise) of at least ``prescreen_min_solid`` of the frame, and not more than
    ``prescreen_max_changed`` of it changed (a cut, a fade, a lighting change)."""
    changed = (np.abs(a - b) > thresh).astype(np.uint8)
    solid = cv2.morphologyEx(changed, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    cf, sf = float(changed.mean()), float(solid.mean())
    return cfg.prescreen_min_solid <= sf and cf <= cfg.prescreen_max_changed, {"changed": cf, "solid": sf}


#: the knobs of Magic Fixup's advance rule: a flow_advance pair carries them (``meta["advance_rule"]``)
#: to the flow stage, which applies the rule
ADVANCE_KNOBS = ("advance_first_min_p90", "advance_max_p90", "advance_step5_min_p95", "advance_final_min_p95")


def advance_rule(cfg) -> dict:
    """The advance rule's thresholds of a pairs config, as the pair carries them."""
    return {k: getattr(cfg, k) for k in ADVANCE_KNOBS}


def advance_select(p90: list[float], p95: list[float], cfg) -> tuple[Optional[int], Optional[str]]:
    """Magic Fixup's advance rule over the flows start->sequence[k] (k = 0, 1, ..., up to the guess:
    the sequence holds the candidates up to it).

    The target advances while p90 <= advance_max_p90. The pair is dropped when p90 <
    advance_first_min_p90 at the first step, when p95 < advance_step5_min_p95 at step 5, or when
    p95 < advance_final_min_p95 at the step before the chosen target (the step before the guess
    when the advance reaches it). Returns (index into the sequence of the chosen target, or None
    with a reason). Statistics are of the median-filtered flows when ``flow.median_filter_px`` is
    set, as in the released code. ``cfg``: the pairs config, or the thresholds of :func:`advance_rule`.
    """
    if isinstance(cfg, dict):
        cfg = SimpleNamespace(**cfg)
    if not p90:
        return None, "empty advance sequence"
    if p90[0] < cfg.advance_first_min_p90:
        return None, f"p90 {p90[0]:.2f} < {cfg.advance_first_min_p90} at the first step"
    k = 0
    while k + 1 < len(p90) and p90[k + 1] <= cfg.advance_max_p90:
        k += 1
        if k == 4 and p95[k] < cfg.advance_step5_min_p95:
            return None, f"p95 {p95[k]:.2f} < {cfg.advance_step5_min_p95} at step 5"
    if p90[k] > cfg.advance_max_p90:
        return None, f"p90 {p90[k]:.2f} > {cfg.advance_max_p90} at the first step"
    before = max(0, k - 1)
    if p95[before] < cfg.advance_final_min_p95:
        return None, f"p95 {p95[before]:.2f} < {cfg.advance_final_min_p95} at the step before the target"
    return k, None
