import numpy as np
import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.stages.pairs import advance_select, sample_pairs


def _cfg(**kw):
    kw.setdefault("oversample", 1)  # the pairs to use only (the demo preset adds spares)
    kw.setdefault("min_separation_s", 0)  # the policies' own draws (the demo preset keeps candidates apart)
    return load_config("demo", [f"pairs.{k}={v}" for k, v in kw.items()]).pairs


def test_no_two_candidates_of_a_shot_have_both_ends_within_the_separation():
    cfg = _cfg(policy="min_gap", per_shot=30, min_gap_s=1.0, max_gap_s=2.5, min_separation_s=0.5)
    fps = 30.0
    pairs, why = sample_pairs(0, 30 * 20, fps, cfg, np.random.default_rng(4))
    assert why is None and len(pairs) == 30
    sep = int(round(0.5 * fps))
    for i, p in enumerate(pairs):
        for q in pairs[:i]:
            assert not (abs(p.src - q.src) <= sep and abs(p.tgt - q.tgt) <= sep), (p, q)
    # without the rule, the same draws hold near-duplicates
    loose, _ = sample_pairs(
        0, 30 * 20, fps, _cfg(policy="min_gap", per_shot=30, min_gap_s=1.0, max_gap_s=2.5), np.random.default_rng(4)
    )
    assert any(abs(p.src - q.src) <= sep and abs(p.tgt - q.tgt) <= sep for i, p in enumerate(loose) for q in loose[:i])


def test_the_prescreen_keeps_only_pairs_it_accepts_and_says_when_none_was():
    """``keep`` (the clip stage's pre-screen of the scan's small frames) decides which draws become
    candidates: here only pairs whose target lies in the second half of the shot."""
    cfg = _cfg(
        policy="min_gap", per_shot=3, oversample=2, min_gap_s=1.0, max_gap_s=2.0, prescreen=True, prescreen_draws=8
    )
    seen = []

    def keep(a, b):
        seen.append((a, b))
        return b >= 150

    pairs, why = sample_pairs(0, 200, 25.0, cfg, np.random.default_rng(5), keep=keep)
    assert why is None and len(pairs) == 6 and all(p.tgt >= 150 for p in pairs)
    assert len(seen) > 6 and len(seen) <= 6 * 8  # more draws than candidates, within the budget
    none, why = sample_pairs(0, 200, 25.0, cfg, np.random.default_rng(5), keep=lambda a, b: False)
    assert none == [] and "pairs.prescreen" in why and "48 pairs drawn" in why
    # off, or for flow_advance, every draw is a candidate
    assert (
        len(
            sample_pairs(
                0,
                200,
                25.0,
                _cfg(per_shot=3, oversample=2, prescreen=False),
                np.random.default_rng(5),
                keep=lambda a, b: False,
            )[0]
        )
        == 6
    )


def test_the_screen_sees_a_moving_thing_not_a_still_outline_or_flicker():
    """At the scan's 128 px, on a 640-px frame: a textured square that moves 24 px is a solid change,
    and so is a small one (1/13 of the frame's width, like a person drinking far from the camera); the
    same square's outline shimmering by a pixel and a few scattered flickering specks are not. (On a
    320-px frame a 1-px shimmer of an edge of 230 grey levels is 0.4 px at 128 px and does leave a
    solid change: the screen only saves CPU, the quality stage judges.)"""
    from vid2pair.stages.pairs import screen_frame, screen_pair

    rng = np.random.default_rng(0)
    bg = np.full((480, 640, 3), 120, np.uint8)
    tex = np.zeros((120, 120, 3), np.uint8)  # a dark square with a bright band
    tex[:, 40:80] = 230

    def frame(x, y, size=120):
        f = bg.copy()
        f[y : y + size, x : x + size] = tex[:size, :size]
        return f

    cfg = _cfg(prescreen=True)
    moved, _ = screen_pair(screen_frame(frame(200, 180)), screen_frame(frame(224, 180)), cfg)
    small, sc_small = screen_pair(screen_frame(frame(200, 180, 48)), screen_frame(frame(260, 200, 48)), cfg)
    shimmer, sc = screen_pair(screen_frame(frame(200, 180)), screen_frame(frame(201, 180)), cfg)
    specks = frame(200, 180)
    for y, x in rng.integers(0, 460, (12, 2)):
        specks[y : y + 6, x : x + 6] = 255 - specks[y : y + 6, x : x + 6]
    flicker, sc_flicker = screen_pair(screen_frame(frame(200, 180)), screen_frame(specks), cfg)
    assert moved and small and not shimmer and not flicker, (sc, sc_small, sc_flicker)


def test_min_gap_intervals_and_bounds():
    cfg = _cfg(policy="min_gap", per_shot=50, min_gap_s=1.0, max_gap_s=3.0, max_attempts=50)
    fps = 25.0
    pairs, why = sample_pairs(100, 400, fps, cfg, np.random.default_rng(0))
    assert why is None and len(pairs) == 50
    for p in pairs:
        dt = (p.tgt - p.src) / fps
        assert 1.0 <= dt <= 3.0
        assert 100 <= p.src < p.tgt < 400
    assert len({p.frames for p in pairs}) == 50  # no duplicates
    gaps = np.array([p.tgt - p.src for p in pairs])
    assert gaps.min() < 40 and gaps.max() > 60  # spread over the feasible range, not clumped


def test_min_gap_shot_too_short():
    cfg = _cfg(policy="min_gap", min_gap_s=2.0)
    pairs, why = sample_pairs(0, 30, 25.0, cfg, np.random.default_rng(0))  # 1.2 s shot
    assert pairs == [] and "no gap >= 2.0 s" in why


def test_uniform_seconds_integer_dt_within_range():
    cfg = _cfg(policy="uniform_seconds", per_shot=200, uniform_min_s=1, uniform_max_s=10, max_attempts=50)
    fps = 30.0
    pairs, why = sample_pairs(0, 30 * 12, fps, cfg, np.random.default_rng(1))
    dts = [(p.tgt - p.src) / fps for p in pairs]
    assert why is None and len(pairs) == 200
    assert all(abs(d - round(d)) < 1e-9 and 1 <= round(d) <= 10 for d in dts)
    counts = np.bincount([round(d) for d in dts], minlength=11)[1:]
    assert (counts > 5).all()  # every integer 1..10 drawn (uniform: ~20 each)


def test_uniform_seconds_only_feasible_dt():
    cfg = _cfg(policy="uniform_seconds", per_shot=20, uniform_min_s=1, uniform_max_s=10)
    pairs, _ = sample_pairs(0, 3 * 30 + 1, 30.0, cfg, np.random.default_rng(2))  # 3 s shot
    assert pairs and all((p.tgt - p.src) / 30.0 in (1.0, 2.0, 3.0) for p in pairs)


def test_flow_advance_is_the_released_sampler():
    """A start in [0, 20) of the shot, 20 frames spaced linearly from it to the end of the shot, a
    target-index guess in [1, min(len, 20)): the sequence holds the candidates up to the guess;
    time reversal walks the same frames backwards."""
    cfg = _cfg(policy="flow_advance", per_shot=60, reverse_prob=0.5, max_attempts=50)
    start, end = 100, 100 + 25 * 20
    pairs, why = sample_pairs(start, end, 25.0, cfg, np.random.default_rng(3))
    assert why is None and len(pairs) == 60
    rev = [p for p in pairs if p.reversed]
    assert 15 <= len(rev) <= 45  # p = 0.5 of 60
    guesses = set()
    for p in pairs:
        frames = [p.src] + p.sequence
        if p.reversed:
            frames = frames[::-1]
        first = frames[0]
        assert start <= first < start + 20
        full = list(dict.fromkeys(int(round(x)) for x in np.linspace(first, end - 1, 20)))
        assert frames == full[: len(frames)]
        assert 1 <= p.guess < 20 and len(frames) == p.guess + 1
        guesses.add(p.guess)
        assert p.tgt == ([p.src] + p.sequence)[-1]
    assert len(guesses) >= 10  # the guess is random over [1, 20)


def test_same_seed_same_pairs():
    cfg = _cfg(policy="min_gap", per_shot=5)
    a, _ = sample_pairs(0, 200, 25.0, cfg, np.random.default_rng(np.random.SeedSequence([0, 42])))
    b, _ = sample_pairs(0, 200, 25.0, cfg, np.random.default_rng(np.random.SeedSequence([0, 42])))
    c, _ = sample_pairs(0, 200, 25.0, cfg, np.random.default_rng(np.random.SeedSequence([1, 42])))
    assert [p.frames for p in a] == [p.frames for p in b] != [p.frames for p in c]


@pytest.mark.parametrize(
    "p90, p95, expect",
    [
        ([0.5, 5, 10], [1, 6, 12], (None, "first step")),  # too little motion at step 1
        ([5, 50, 120, 200, 260, 320], [60, 80, 150, 250, 300, 400], (4, None)),  # advances while p90 <= 300
        ([5, 10, 15, 18, 19, 25], [6, 12, 16, 19, 19.5, 30], (None, "step 5")),  # p95 < 20 at step 5
        ([5, 10, 400], [6, 30, 500], (None, "before the target")),  # stops at k=1, p95 at k=0 is 6 < 50
        ([60, 100, 400], [70, 120, 500], (1, None)),
    ],
)
def test_advance_select_rules(p90, p95, expect):
    cfg = load_config("magicfixup").pairs
    k, why = advance_select(p90, p95, cfg)
    assert k == expect[0]
    if expect[1]:
        assert expect[1] in why


def test_a_retry_takes_about_half_the_gap_and_never_less_than_the_policys_minimum():
    from vid2pair.stages.pairs import shorter_target

    idx = [int(round(x)) for x in np.linspace(100, 160, 17)]  # 2.4 s at 25 fps, 17 frames decoded
    cfg = _cfg(policy="min_gap", min_gap_s=1.0)
    j = shorter_target(idx, 25.0, cfg)
    assert idx[j] - 100 == 30  # half of 60 frames
    cfg2 = _cfg(policy="min_gap", min_gap_s=2.0, max_gap_s=3.0)
    assert idx[shorter_target(idx, 25.0, cfg2)] - 100 == 52  # not below 2 s: the first decoded frame >= 50
    assert shorter_target(idx[:13], 25.0, cfg2) is None  # a 1.8-s pair: no shorter gap of 2 s or more
    rev = idx[::-1]  # a reversed pair: source 160, target 100
    assert rev[shorter_target(rev, 25.0, cfg)] == 130
    uni = _cfg(policy="uniform_seconds", uniform_min_s=1, uniform_max_s=10)
    idx4 = [int(round(x)) for x in np.linspace(0, 100, 21)]  # 4 s
    assert idx4[shorter_target(idx4, 25.0, uni)] == 50
    assert shorter_target(idx, 25.0, _cfg(policy="flow_advance")) is None
    assert shorter_target([0, 25], 25.0, cfg) is None  # nothing in between to stop at


def test_pairs_rejected_for_motion_are_retried_at_a_shorter_gap(demo_corpus, tmp_path):
    """A stage that rejects every pair more than 1.6 s apart as motion_too_large: each such pair is
    tried again at about half its gap (>= min_gap_s 1 s) from the frames already decoded, keyed
    ``<key>_r1``; its reject stays in the table and names the retry; retry_shorter=0 turns it off."""
    from fault_stages import RejectLongGaps, with_stage

    from vid2pair.pipeline.io import read_index, read_rejects
    from vid2pair.pipeline.runners import build
    from vid2pair.stages.motion import MotionStage

    stages = with_stage(MotionStage, RejectLongGaps)
    clip = str(demo_corpus[1][0])
    base = [
        "runner.name=local",
        "runner.progress=false",
        "pairs.per_shot=6",
        "pairs.max_gap_s=3.0",
        "pairs.oversample=1",
    ]  # retries only, no spare draws
    s = build(
        load_config("demo", [*base, "pairs.retry_shorter=1"]), clip, tmp_path / "on", log_summary=False, stages=stages
    )
    s0 = build(
        load_config("demo", [*base, "pairs.retry_shorter=0"]), clip, tmp_path / "off", log_summary=False, stages=stages
    )
    idx, rej = read_index(tmp_path / "on"), read_rejects(tmp_path / "on")
    idx0, rej0 = read_index(tmp_path / "off"), read_rejects(tmp_path / "off")
    long = rej0[rej0["reason"] == "motion_too_large"]
    assert len(long) >= 2 and not any("_r" in k for k in idx0["key"])  # off: the long pairs are just rejected
    retried = rej[(rej["reason"] == "motion_too_large") & rej["detail"].str.contains("retried at dt")]
    assert set(retried["key"]) == set(long["key"])  # the same candidates, now each with a retry
    pair_level = rej[rej["level"] == "pair"]
    for key, detail in zip(retried["key"], retried["detail"]):
        r1 = detail.split(" as ")[-1]
        assert r1 == f"{key}_r1" and (r1 in set(idx["key"]) or r1 in set(pair_level["key"]))
    r_keys = [k for k in idx["key"] if k.endswith("_r1")]
    assert r_keys and s["samples"] == s0["samples"] + len(r_keys)
    dts = dict(zip(idx["key"], idx["dt"]))
    for k in r_keys:
        orig_dt = float(long[long["key"] == k[:-3]]["detail"].iloc[0].split()[1])
        assert 1.0 - 1e-6 <= dts[k] <= max(1.0, orig_dt / 2) + 0.15, (k, dts[k], orig_dt)
    assert s["all_inputs_accounted"] and s0["all_inputs_accounted"]


def test_oversample_draws_spares_after_the_pairs_to_use():
    """``oversample`` adds spare draws after the ``per_shot`` pairs to use: those first pairs are the
    ones drawn without spares, and every draw is distinct."""
    base = sample_pairs(0, 200, 25.0, _cfg(per_shot=3, oversample=1), np.random.default_rng(7))[0]
    more = sample_pairs(0, 200, 25.0, _cfg(per_shot=3, oversample=4), np.random.default_rng(7))[0]
    assert [p.frames for p in more[:3]] == [p.frames for p in base]
    assert len(more) == 12 and len({p.frames for p in more}) == 12
    assert len(sample_pairs(0, 200, 25.0, _cfg(per_shot=3, oversample=2.5), np.random.default_rng(7))[0]) == 8


def test_rejected_pairs_are_replaced_by_spare_draws_until_per_shot_came_through(demo_corpus, tmp_path):
    """With ``pairs.oversample`` a pair that a stage rejects is replaced by the next spare draw, until
    ``per_shot`` pairs came through; no spare is drawn after that, and every draw is written or
    rejected with its reason."""
    from fault_stages import RejectLongGaps, with_stage

    from vid2pair.pipeline.io import read_index, read_rejects
    from vid2pair.pipeline.runners import build
    from vid2pair.stages.motion import MotionStage

    stages = with_stage(MotionStage, RejectLongGaps)
    clip = str(demo_corpus[1][0])
    base = [
        "runner.name=local",
        "runner.progress=false",
        "pairs.per_shot=3",
        "pairs.max_gap_s=2.5",
        "pairs.retry_shorter=0",
    ]
    s1 = build(
        load_config("demo", [*base, "pairs.oversample=1"]), clip, tmp_path / "one", log_summary=False, stages=stages
    )
    s4 = build(
        load_config("demo", [*base, "pairs.oversample=6"]), clip, tmp_path / "four", log_summary=False, stages=stages
    )
    idx1, rej1 = read_index(tmp_path / "one"), read_rejects(tmp_path / "one")
    idx4, rej4 = read_index(tmp_path / "four"), read_rejects(tmp_path / "four")
    rej1, rej4 = rej1[rej1["level"] == "pair"], rej4[rej4["level"] == "pair"]
    assert len(rej1) >= 1 and len(idx1) + len(rej1) == 3  # without spares: 3 candidates, some rejected
    assert set(idx1["key"]) <= set(idx4["key"]) and set(rej1["key"]) <= set(rej4["key"])  # the same first draws
    assert len(idx4) == 3 and len(idx4) + len(rej4) <= 18  # spares filled the shot up to per_shot
    assert (idx4["dt"] <= 1.6).all() and rej4["reason"].eq("motion_too_large").all()
    assert s1["all_inputs_accounted"] and s4["all_inputs_accounted"]
    # no spare is drawn once three pairs came through: fewer than the 18 allowed were tried
    assert len(idx4) + len(rej4) < 18
