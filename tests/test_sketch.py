"""FramePainter-style sketch from optical-flow edges (stages/sketch.py)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from vid2pair.core.items import PairItem, Reject
from vid2pair.core.spec import validate
from vid2pair.stages.sketch import SketchConfig, SketchStage, edge_strength, sketch_from_flow, target_flow, thin


def _item(src, tgt, flow, key="k", **extra):
    return PairItem(
        key=key,
        clip_id="c",
        source="s.mp4",
        chunk=0,
        clip_idx=0,
        meta={},
        arrays={"src": src, "tgt": tgt, "flow": flow, **extra},
    )


def _stage(**kw):
    return SketchStage(SimpleNamespace(sketch=SketchConfig(**kw)))


def _boundary(lab):
    b = np.zeros(lab.shape, bool)
    dx = lab[:, 1:] != lab[:, :-1]
    dy = lab[1:] != lab[:-1]
    b[:, 1:] |= dx
    b[:, :-1] |= dx
    b[1:] |= dy
    b[:-1] |= dy
    return b


def _precision_recall(sketch, lab, tol):
    """Share of stroke pixels within ``tol`` px of an object boundary (precision), and of
    boundary pixels within ``tol`` px of a stroke (recall)."""
    bd = _boundary(lab)
    d_bd = cv2.distanceTransform((~bd).astype(np.uint8), cv2.DIST_L2, 5)
    s = sketch > 0
    d_s = cv2.distanceTransform((~s).astype(np.uint8), cv2.DIST_L2, 5)
    return float((d_bd[s] <= tol).mean()), float((d_s[bd] <= tol).mean())


# ------------------------------------------------------------------------------ pieces


def test_static_scene_gives_no_strokes():
    assert sketch_from_flow(np.zeros((60, 80, 2), np.float32)).max() == 0
    noise = np.random.default_rng(0).normal(0, 0.1, (60, 80, 2)).astype(np.float32)
    assert sketch_from_flow(noise).max() == 0  # below the absolute floor
    smooth = np.zeros((60, 80, 2), np.float32)
    smooth[..., 0] = np.linspace(0, 8, 80)[None]  # a smooth zoom-like ramp: no boundary
    assert sketch_from_flow(smooth).max() == 0


def test_edge_strength_reads_the_jump_in_px():
    f = np.zeros((20, 30, 2), np.float32)
    f[:, 15:, 0] = 6.0
    f[:, 15:, 1] = 8.0  # a 10 px jump
    e = edge_strength(f)
    assert e[10, 14] == pytest.approx(10.0, rel=1e-5) and e[10, 15] == pytest.approx(10.0, rel=1e-5)
    assert e[10, :13].max() == 0 and e[10, 17:].max() == 0


def test_thinning_gives_one_pixel_lines():
    m = np.zeros((40, 60), bool)
    m[10:15, 5:55] = True  # 5-px thick bar
    sk = thin(m)
    assert sk.any() and (sk <= m).all()
    cols = sk[:, 8:52].sum(axis=0)
    assert (cols == 1).all()  # one pixel thick
    n, _ = cv2.connectedComponents(sk.astype(np.uint8), connectivity=8)
    assert n == 2  # still one piece
    assert not thin(np.zeros((5, 5), bool)).any()


def test_translating_square_outlines_the_target_position():
    h, w = 80, 100
    fwd = np.zeros((h, w, 2), np.float32)
    fwd[20:50, 20:50, 0] = 12.0  # a 30x30 square moves 12 px right
    bwd = np.zeros((h, w, 2), np.float32)
    bwd[20:50, 32:62, 0] = -12.0
    lab = np.zeros((h, w), np.int32)
    lab[20:50, 32:62] = 1  # target position
    rng = np.random.default_rng(0)
    tex = cv2.GaussianBlur(rng.integers(0, 255, (h, w, 3)).astype(np.float32), (0, 0), 1.5)
    tex = np.clip((tex - 127) * 4 + 127, 0, 255).astype(np.uint8)
    src = tex.copy()
    tgt = tex.copy()  # the square's texture (a different patch) moves, the background stays
    patch = tex[::-1, ::-1][20:50, 20:50]
    src[20:50, 20:50] = patch
    tgt[20:50, 32:62] = patch
    for field, how in [target_flow(fwd, bwd), target_flow(fwd, None, src, tgt)]:
        sk = sketch_from_flow(field, SketchConfig(stroke_width=1, min_component_px=4))
        p, r = _precision_recall(sk, lab, 1.5)
        assert p == 1.0 and r >= 0.95, (how, p, r)
        src_lab = np.zeros((h, w), np.int32)
        src_lab[20:50, 20:50] = 1
        assert _precision_recall(sk, src_lab, 1.5)[1] < 0.8  # not the source outline


def test_density_keeps_the_strongest_strokes_and_width_dilates():
    f = np.zeros((80, 120, 2), np.float32)
    f[10:30, 10:40, 0] = 20.0  # strong mover
    f[45:70, 60:100, 1] = 3.0  # weak mover
    full = sketch_from_flow(f, SketchConfig(stroke_width=1, rel_thresh=0.05))
    assert full[10:30, 10:40].any() and full[45:70, 60:100].any()
    sparse = sketch_from_flow(f, SketchConfig(stroke_width=1, rel_thresh=0.05, density=0.5))
    assert sparse[10:30, 10:40].any() and not sparse[45:70, 60:100].any()
    thick = sketch_from_flow(f, SketchConfig(stroke_width=5, rel_thresh=0.05))
    assert (thick >= full).all() and (thick > 0).sum() > 3 * (full > 0).sum()
    tiny = np.zeros((80, 120, 2), np.float32)
    tiny[40:42, 40:42] = 9.0  # a 2x2 blob: its outline is shorter than min_component_px
    assert sketch_from_flow(tiny, SketchConfig(min_component_px=20)).max() == 0


# ------------------------------------------------------------------------------ synthetic clips


def test_strokes_lie_on_true_motion_boundaries_gt_flow(capsys):
    from vid2pair.pipeline.synthetic import make_clip

    lines = []
    for seed in range(4):
        clip = make_clip(width=160, height=120, n_frames=8, n_objects=2, seed=seed)
        i, j = 0, 6
        src, tgt = clip.frames[i], clip.frames[j]
        lab = clip.object_masks(j)  # target layout
        fwd, bwd = clip.flow(i, j)[0], clip.flow(j, i)[0]
        for name, b in (("flow_bwd", bwd), ("splat", None)):
            field, how = target_flow(fwd, b, src, tgt)
            assert how == name
            sk = sketch_from_flow(field)
            p, r = _precision_recall(sk, lab, 3)
            lines.append(f"seed {seed} {name:8s}: precision {p:.2f} recall {r:.2f}")
            assert p >= 0.8 and r >= 0.85, lines[-1]
    with capsys.disabled():
        print("\nsketch, GT flow, 160x120, 6 frames apart, tol 3 px:\n  " + "\n  ".join(lines))


def test_strokes_lie_on_true_motion_boundaries_dis_flow(capsys):
    from vid2pair.pipeline.synthetic import make_clip
    from vid2pair.stages.flow import DISFlow

    dis = DISFlow("medium")
    lines = []
    for seed in range(4):
        clip = make_clip(width=320, height=240, n_frames=4, n_objects=2, seed=seed)
        src, tgt = clip.frames[0], clip.frames[3]
        lab = clip.object_masks(3)
        fb = dis(np.stack([src, tgt]), np.stack([tgt, src]))
        for name, b in (("flow_bwd", fb[1]), ("splat", None)):
            field, _ = target_flow(fb[0], b, src, tgt)
            sk = sketch_from_flow(field)
            p, r = _precision_recall(sk, lab, 3)
            lines.append(f"seed {seed} {name:8s}: precision {p:.2f} recall {r:.2f}")
            assert p >= 0.8 and r >= 0.4, lines[-1]
    with capsys.disabled():
        print("\nsketch, DIS flow, 320x240, 3 frames apart, tol 3 px:\n  " + "\n  ".join(lines))


# ------------------------------------------------------------------------------ stage


def test_sketch_stage_adds_sketch_and_meta():
    from vid2pair.pipeline.synthetic import make_clip

    clip = make_clip(width=128, height=96, n_frames=6, n_objects=2, seed=1)
    src, tgt = clip.frames[0], clip.frames[4]
    fwd, bwd = clip.flow(0, 4)[0], clip.flow(4, 0)[0]
    a, b = _stage()([_item(src, tgt, fwd, key="a", flow_bwd=bwd), _item(src, tgt, fwd, key="b")])
    for it, how in ((a, "flow_bwd"), (b, "splat")):
        assert isinstance(it, PairItem)
        sk = it.arrays["sketch"]
        assert sk.shape == src.shape[:2] and sk.dtype == np.uint8 and set(np.unique(sk)) <= {0, 255}
        m = it.meta["sketch"]
        assert m["frame"] == "tgt" and m["flow"] == how
        assert 0 < m["stroke_frac"] == pytest.approx((sk > 0).mean(), abs=1e-6)
    (c,) = _stage(use_flow_bwd=False)([_item(src, tgt, fwd, flow_bwd=bwd)])
    assert c.meta["sketch"]["flow"] == "splat"
    (d,) = _stage(max_stroke_frac=0.001)([_item(src, tgt, fwd, flow_bwd=bwd)])
    assert isinstance(d, Reject) and d.stage == "sketch" and d.reason == "sketch_too_dense"


def test_static_pair_gives_empty_sketch_in_stage():
    src = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    (it,) = _stage()([_item(src, src, np.zeros((48, 64, 2), np.float32))])
    assert isinstance(it, PairItem) and it.arrays["sketch"].max() == 0 and it.meta["sketch"]["stroke_frac"] == 0


def test_bad_input_is_rejected_not_raised():
    src = np.zeros((32, 40, 3), np.uint8)
    good = np.zeros((32, 40, 2), np.float32)
    nan = good.copy()
    nan[1, 2] = np.nan
    out = _stage()(
        [
            _item(src, src, nan),
            _item(src[:0], src[:0], good[:0]),
            _item(src, src, good[:5]),
            _item(src, src, good, flow_bwd=nan),
            _item(src, src, good),
        ]
    )
    assert [getattr(o, "reason", None) for o in out] == ["invalid_flow", "bad_input", "bad_input", "invalid_flow", None]
    with pytest.raises(ValueError):
        sketch_from_flow(nan)


def test_config_validation():
    from vid2pair.pipeline.config import ConfigError

    validate(SketchConfig(), "sketch.")
    for kw, key in [
        ({"rel_thresh": -1.0}, "sketch.rel_thresh"),
        ({"abs_thresh_px": 0.0}, "sketch.abs_thresh_px"),
        ({"stroke_width": 0}, "sketch.stroke_width"),
        ({"min_component_px": 0}, "sketch.min_component_px"),
        ({"density": 0.0}, "sketch.density"),
        ({"max_stroke_frac": 2.0}, "sketch.max_stroke_frac"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(SketchConfig(**kw), "sketch.")


def test_pruning_keeps_an_outline_and_erases_a_stroke_through_still_content():
    """Strokes next to a verified moving square: its outline stays; a stroke across still content 30 px
    away goes; a line leaving the square keeps the part next to it; a piece left too short goes."""
    from vid2pair.stages.sketch import prune_strokes

    support = np.zeros((120, 160), np.uint8)
    support[30:80, 30:80] = 1
    near = cv2.dilate(support, np.ones((7, 7), np.uint8)) > 0
    outline = np.zeros((120, 160), np.uint8)
    cv2.rectangle(outline, (30, 30), (79, 79), 1, 3)
    stray = np.zeros_like(outline)
    cv2.line(stray, (110, 10), (110, 110), 1, 3)
    leaving = np.zeros_like(outline)
    cv2.line(leaving, (80, 55), (100, 55), 1, 3)
    kept = prune_strokes((outline | stray | leaving) > 0, near, min_area=30)
    assert kept[outline > 0].mean() == 1.0
    assert not kept[stray > 0].any()
    assert kept[55, 80:83].all() and not kept[55, 84:].any()
    short = np.zeros_like(outline)
    cv2.line(short, (81, 5), (81, 40), 1, 3)  # only its end (rows 27-42) lies next to the square
    n = int(((short > 0) & near).sum())
    assert 30 <= n <= 70
    assert prune_strokes(short > 0, near, min_area=n).sum() == n
    assert not prune_strokes(short > 0, near, min_area=n + 1).any()
    # what is left of it is a stub, 3 px wide and 16 long: its centre line is 11 px
    assert prune_strokes(short > 0, near, min_area=30, min_len=10).sum() == n
    assert not prune_strokes(short > 0, near, min_area=30, min_len=20).any()
    dot = np.zeros_like(outline)
    cv2.circle(dot, (55, 55), 4, 1, -1)  # a dot of 49 px, no longer than wide, on the square
    assert prune_strokes((outline | dot) > 0, near, min_area=30).sum() > (outline > 0).sum()
    kept = prune_strokes((outline | dot) > 0, near, min_area=30, min_len=10)
    assert kept[outline > 0].all() and not kept[dot > 0].any()
