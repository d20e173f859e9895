"""Drag points (sampling, accuracy against exact motion, mask, JSON) and the matching supervision C / M.

Drag-point accuracy measured with TrackStage (flow_chain, ground-truth flow as the flow stage's
output) on 8 synthetic 320x240 clips moving 45-78 px: 58 points kept of 70 candidates, error of
the source position |tracked - true| median 0.11 px, p90 0.73 px, max 2.24 px; no occluded point
kept (with the demo's chained DIS flow instead: 56 kept, median 0.12, max 0.69). The clip here
gives the bounds asserted below.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from vid2pair.core.items import PairItem
from vid2pair.core.spec import validate
from vid2pair.pipeline.synthetic import ObjectSpec, make_clip
from vid2pair.stages.drag import (
    DragConfig,
    contradicting,
    drag_json,
    drag_mask,
    drag_weights,
    flow_agreement,
    sample_drag_points,
    target_side_magnitude,
)
from vid2pair.stages.matching import correspondence, correspondence_index, token_centres
from vid2pair.stages.track import TrackConfig, TrackStage

# --------------------------------------------------------------------------------------
# sampling


def _pairwise_min(p):
    d = np.linalg.norm(p[:, None] - p[None], axis=2)
    d[np.arange(len(p)), np.arange(len(p))] = np.inf
    return d.min()


def test_sample_spacing_support_and_determinism():
    rng = np.random.default_rng(0)
    mag = np.zeros((120, 160), np.float32)
    mag[20:100, 30:130] = rng.uniform(1, 10, (80, 100))
    pts = sample_drag_points(mag, 12, 15.0, np.random.default_rng(7))
    assert pts.shape == (12, 2) and pts.dtype == np.float32
    assert _pairwise_min(pts) >= 15.0
    assert (mag[pts[:, 1].astype(int), pts[:, 0].astype(int)] > 0).all()  # never on static pixels
    np.testing.assert_array_equal(pts, sample_drag_points(mag, 12, 15.0, np.random.default_rng(7)))
    assert not np.array_equal(pts, sample_drag_points(mag, 12, 15.0, np.random.default_rng(8)))
    # the area cannot hold more: fewer points, still spaced
    small = np.zeros((60, 60), np.float32)
    small[20:30, 20:30] = 1.0
    few = sample_drag_points(small, 10, 8.0, np.random.default_rng(1))
    assert 1 <= len(few) < 10 and _pairwise_min(few) >= 8.0
    assert sample_drag_points(np.zeros((10, 10)), 5, 2.0, np.random.default_rng(0)).shape == (0, 2)
    assert sample_drag_points(mag, 0, 2.0, np.random.default_rng(0)).shape == (0, 2)


def test_sample_probability_proportional_to_magnitude():
    # two equal areas, magnitudes 1 and 3: single draws land in the second 3x as often
    mag = np.zeros((10, 20), np.float32)
    mag[:, :10], mag[:, 10:] = 1.0, 3.0
    rng = np.random.default_rng(123)
    hits = sum(sample_drag_points(mag, 1, 0.0, rng)[0, 0] >= 10 for _ in range(4000))
    assert abs(hits / 4000 - 0.75) < 0.03


def test_drag_weights_keep_away_from_outlines():
    mag = np.zeros((50, 50), np.float32)
    mag[10:40, 10:40] = 5.0
    mag[5, 5] = 0.5  # below min_flow
    w = drag_weights(mag, 2.0, margin_px=3)
    assert w[5, 5] == 0 and w[10, 10] == 0 and w[13, 13] == 5.0 and w[25, 25] == 5.0
    thin = np.zeros((50, 50), np.float32)
    thin[20:22, 5:45] = 5.0  # too thin to erode: falls back to the moving pixels
    assert (drag_weights(thin, 2.0, 3) > 0).sum() == 80


def test_target_side_magnitude():
    h, w = 40, 60
    flow = np.zeros((h, w, 2), np.float32)
    flow[10:20, 10:20] = (12.0, 5.0)  # a block moves by 13 px
    mag = target_side_magnitude(flow)
    np.testing.assert_allclose(mag[15:25, 22:32], 13.0)  # the block at its target position
    assert mag[12, 12] == 0.0  # its source position is background (disoccluded) at the target
    assert mag[35, 50] == 0.0
    bwd = np.zeros((h, w, 2), np.float32)
    bwd[0, 0] = (3.0, 4.0)
    assert target_side_magnitude(flow, bwd)[0, 0] == 5.0  # backward flow wins when present


def test_flow_agreement():
    flow = np.zeros((30, 30, 2), np.float32)
    flow[..., 0] = 10.0
    src = np.array([[5.0, 5.0], [5.0, 5.0]], np.float32)
    tgt = np.array([[15.0, 5.0], [6.0, 5.0]], np.float32)
    np.testing.assert_array_equal(flow_agreement(flow, src, tgt, 3.0), [True, False])


def test_drags_from_one_handle_to_two_places_contradict():
    """On a real coin_pen pair (320 px wide) a corner match took the coin's edge to the pen tip, 0.3 px
    from the tracked drag that took it along with the coin; both passed every other drag rule. Nearby
    handles moving alike (real motion.mov 180->226: 22 px apart, 9 px unlike) do not contradict."""
    hs = np.array([[266.27, 102.1], [266.0, 102.0], [282.83, 90.1], [175.0, 117.0], [165.0, 97.0]])
    ts = np.array([[148.0, 136.0], [297.83, 91.69], [169.0, 121.0], [161.12, 192.75], [149.58, 163.82]])
    np.testing.assert_array_equal(contradicting(hs, ts, 10.0, 10.0), [True, True, False, False, False])
    # the same handles, farther than near_px: no contradiction
    assert not contradicting(hs[:2] * [1, 1] + [[0, 0], [11, 0]], ts[:2], 10.0, 10.0).any()
    # two handles 16 px apart: moving 55 px apart tears what lies between, 30 px is a body bending
    two = np.float32([[74, 72], [71, 88]])
    torn = two + np.float32([[41, 8], [-13, -2]])
    bent = two + np.float32([[41, 8], [13, 2]])
    assert not contradicting(two, torn, 10.0, 10.0).any()
    assert contradicting(two, torn, 10.0, 10.0, tear_px=20.0).all()
    assert not contradicting(two, bent, 10.0, 10.0, tear_px=20.0).any()
    assert not contradicting(two, torn, 10.0, 10.0, tear_px=15.0).any()  # farther apart than the reach


# --------------------------------------------------------------------------------------
# the stage's drag points against exact motion


@pytest.fixture(scope="module")
def moving_pair():
    clip = make_clip(
        width=320,
        height=240,
        n_frames=64,
        seed=5,
        objects=[
            ObjectSpec("rect", (70, 64), (90, 110), velocity=(1.0, 0.25), texture_seed=21),
            ObjectSpec("ellipse", (56, 66), (240, 80), velocity=(-0.5, 0.7), angular_velocity=0.2, texture_seed=22),
        ],
    )
    t = clip.n_frames
    item = PairItem(
        key="syn_s000_f000000_f000063",
        clip_id="syn",
        source="syn.mp4",
        chunk=0,
        clip_idx=0,
        meta={},
        arrays={"src": clip.frames[0], "tgt": clip.frames[-1], "flow": clip.flow(0, t - 1)[0], "frames": clip.frames},
    )
    return clip, item


def _run(item, **drag):
    cfg = SimpleNamespace(seed=0, track=TrackConfig(), drag=DragConfig(**drag))
    it = PairItem(
        key=item.key, clip_id=item.clip_id, source=item.source, chunk=0, clip_idx=0, meta={}, arrays=dict(item.arrays)
    )
    return TrackStage(cfg)([it])[0]


@pytest.fixture(scope="module")
def stage_out(moving_pair):
    return _run(moving_pair[1])


def test_drag_points_match_true_motion(moving_pair, stage_out):
    clip, item = moving_pair
    out = stage_out
    assert isinstance(out, PairItem), getattr(out, "detail", "")
    d = out.meta["drag"]
    assert d["image_size"] == [320, 240] and d["direction"] == "source_to_target"
    src = np.array([p["source"] for p in d["points"]], np.float32)
    tgt = np.array([p["target"] for p in d["points"]], np.float32)
    assert len(src) >= 6
    true_src, visible = clip.track(tgt, clip.n_frames - 1, 0)
    assert visible.all()  # no occluded handle survives
    err = np.linalg.norm(src - true_src, axis=1)
    print(
        f"drag points: {len(err)} kept of {out.meta['track']['drag_sampled']} sampled; |error| "
        f"median {np.median(err):.2f} max {err.max():.2f} px"
    )
    assert np.median(err) <= 0.5 and err.max() <= 3.0  # measured median 0.11, max 2.24 (8 clips)
    motion = np.linalg.norm(tgt - true_src, axis=1)
    assert motion.min() >= 2.0 and np.median(motion) > 30  # only moving pixels are sampled
    assert _pairwise_min(tgt) >= 24.0  # default min_spacing_px
    # deterministic for a pair key and seed
    again = _run(item)
    assert again.meta["drag"] == d
    # the mask holds every handle and target and the moving objects, not the static corners
    m = out.arrays["drag_mask"] > 0
    for p in np.concatenate([src, tgt]):
        assert m[int(round(p[1])), int(round(p[0]))]
    labels = clip.object_masks(0)
    assert m[labels > 0].mean() > 0.9 and not m[:20, :20].any() and not m[-20:, -20:].any()


def test_drag_direction_swap(moving_pair, stage_out):
    _, item = moving_pair
    a = stage_out
    b = _run(item, direction="target_to_source")
    assert b.meta["drag"]["direction"] == "target_to_source"
    for p, q in zip(a.meta["drag"]["points"], b.meta["drag"]["points"]):
        assert p["source"] == q["target"] and p["target"] == q["source"]


def test_drag_json_and_mask_helpers():
    d = drag_json(np.array([[1.234, 2.0]]), np.array([[5.0, 6.789]]), (64, 48))
    assert d == {
        "image_size": [64, 48],
        "direction": "source_to_target",
        "points": [{"source": [1.23, 2.0], "target": [5.0, 6.79]}],
    }
    json.dumps(d)
    flow = np.zeros((48, 64, 2), np.float32)
    assert not drag_mask(flow, np.zeros((48, 64)), np.zeros((0, 2)), np.zeros((0, 2)), 2.0, 5).any()
    m = drag_mask(flow, np.zeros((48, 64)), np.array([[10.0, 10.0]]), np.array([[30.0, 20.0]]), 2.0, 4)
    assert m[10, 10] == 255 and m[20, 30] == 255 and m[10, 14] == 255 and m[10, 15] == 0 and m[40, 60] == 0


def test_drag_config_validate():
    from vid2pair.pipeline.config import ConfigError

    validate(DragConfig(), "drag.")
    for kw, key in [
        ({"k": -1}, "drag.k"),
        ({"min_spacing_px": -1.0}, "drag.min_spacing_px"),
        ({"min_flow_px": float("nan")}, "drag.min_flow_px"),
        ({"mask_dilate_px": -2}, "drag.mask_dilate_px"),
        ({"direction": "up"}, "drag.direction"),
        ({"flow_check_px": -1.0}, "drag.flow_check_px"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(DragConfig(**kw), "drag.")


# --------------------------------------------------------------------------------------
# matching supervision


def test_token_centres_row_major():
    c = token_centres((64, 32), (4, 8))  # W=64, H=32, 8x8 px tokens
    assert c.shape == (32, 2)
    np.testing.assert_allclose(c[0], [3.5, 3.5])
    np.testing.assert_allclose(c[1], [11.5, 3.5])  # next column
    np.testing.assert_allclose(c[8], [3.5, 11.5])  # next row


def test_correspondence_one_hot_rows():
    w, h, grid = 64, 32, (4, 8)
    centres = token_centres((w, h), grid)
    # every target token moves exactly one token right (+8 px) and one down (+8 px)
    tracks = np.concatenate([centres, centres + 8.0], axis=1)
    vis = np.ones(len(tracks), np.uint8)
    vis[5] = 0  # occluded
    c, m = correspondence(tracks, vis, (w, h), grid)
    assert c.shape == (32, 32) and m.shape == (32,) and c.dtype == np.float32 and m.dtype == np.float32
    for i in range(32):
        r, col = divmod(i, 8)
        if i == 5 or r == 3 or col == 7:  # invisible, or landing below / right of the image
            assert m[i] == 0 and not c[i].any()
        else:
            assert m[i] == 1 and c[i].sum() == 1 and c[i, (r + 1) * 8 + col + 1] == 1
    idx = correspondence_index(tracks, vis, (w, h), grid)
    np.testing.assert_array_equal(idx >= 0, m > 0)
    np.testing.assert_array_equal(c.argmax(axis=1)[m > 0], idx[m > 0])


def test_correspondence_aggregation_and_edges():
    w, h, grid = 32, 16, (2, 4)  # 8 px tokens
    tracks = np.array(
        [
            [1.0, 1.0, 3.0, 1.0],  # token 0 moves +2 px alone (-> token 0) ...
            [3.4, 3.6, 17.4, 3.6],  # ... and +14 px (-> token 2): the centre (3.5, 3.5) moves +8 -> source token 1
            [12.0, 4.0, 40.0, 4.0],  # token 1, lands outside the image -> M = 0
            [20.0, 12.0, 31.49, 15.49],  # token 6 -> source token 7 (last pixel centre)
            [27.0, 3.0, 5.0, 5.0],  # token 3, invisible -> M = 0
            [26.0, 4.0, float("nan"), 5.0],  # token 3, non-finite -> ignored
        ],
        np.float32,
    )
    vis = np.array([1, 1, 1, 1, 0, 1], np.uint8)
    c, m = correspondence(tracks, vis, (w, h), grid)
    np.testing.assert_array_equal(m, [1, 0, 0, 0, 0, 0, 1, 0])
    assert c[0, 1] == 1 and c[0].sum() == 1 and c[6, 7] == 1 and c.sum() == 2
    # the stage's stored tracks feed it directly
    assert correspondence_index(np.zeros((0, 4)), np.zeros(0), (w, h), grid).tolist() == [-1] * 8


def test_correspondence_from_stage_tracks(moving_pair, stage_out):
    clip, item = moving_pair
    out = stage_out
    tracks, vis = out.arrays["tracks"], out.arrays["visibility"]
    c, m = correspondence(tracks, vis, (320, 240), (30, 40))  # 8 px tokens
    assert 0.8 < m.mean() <= 1.0
    assert np.all(c.sum(axis=1) == m)
    # background tokens map to themselves; a token on the moving rect maps ~ (1.0, 0.25)*63 px away
    i_bg = 2 * 40 + 2
    assert c[i_bg, i_bg] == 1
    tc = token_centres((320, 240), (30, 40))
    lab = clip.object_masks(clip.n_frames - 1)
    on_obj = np.flatnonzero((lab[np.rint(tc[:, 1]).astype(int), np.rint(tc[:, 0]).astype(int)] == 1) & (m > 0))
    true_src, _ = clip.track(tc[on_obj], clip.n_frames - 1, 0)
    got = tc[c[on_obj].argmax(axis=1)]
    assert np.median(np.abs(got - true_src).max(axis=1)) <= 4.0  # within the source token (8 px)


@pytest.mark.parametrize("grid", [(72, 128), (36, 64), (18, 32), (9, 16)])
def test_matching_target_maps_each_token_centre_where_it_moves(grid):
    """Tracks one per 8x8 cell at 576x1024 (as stored), random sub-pixel translations: each target
    token's source token is where the token's own centre moves (<= 1 % wrong rows at every grid)."""
    from vid2pair.stages.matching import correspondence_index, token_centres
    from vid2pair.stages.track import query_grid

    H_, W_ = 576, 1024
    q = query_grid(H_, W_, 8)
    rng = np.random.default_rng(0)
    wrong = total = 0
    for _ in range(20):
        d = rng.uniform(-40, 40, 2)
        tracks = np.concatenate([q, q + d], axis=1)
        idx = correspondence_index(tracks, np.ones(len(q), np.uint8), (W_, H_), grid)
        c = token_centres((W_, H_), grid).astype(np.float64) + d
        ht, wt = grid
        col = np.floor((c[:, 0] + 0.5) * wt / W_).astype(int)
        row = np.floor((c[:, 1] + 0.5) * ht / H_).astype(int)
        inside = (col >= 0) & (col < wt) & (row >= 0) & (row < ht)
        want = np.where(inside, row * wt + col, -1)
        moving = want >= 0
        wrong += int((idx[moving] != want[moving]).sum())
        total += int(moving.sum())
    assert wrong <= 0.01 * total, (grid, wrong, total)


def test_trainer_reads_drag_direction():
    """drag.json with direction target_to_source lists (target point, source point): the trainer's
    [xs, ys, xt, yt] must come out the same as from the default direction."""
    import io as _io

    from PIL import Image

    from vid2pair.trainer.data import SampleSpec, decode_sample

    img = Image.new("RGB", (64, 48), (120, 60, 30))
    b = _io.BytesIO()
    img.save(b, format="PNG")
    pts = [{"source": [10.0, 20.0], "target": [30.0, 25.0]}]
    fwd = {"image_size": [64, 48], "direction": "source_to_target", "points": pts}
    rev = {
        "image_size": [64, 48],
        "direction": "target_to_source",
        "points": [{"source": p["target"], "target": p["source"]} for p in pts],
    }
    spec = SampleSpec(task="drag", resolution=(48, 64), random_drag=False)
    out = []
    for d in (fwd, rev):
        raw = {
            "__key__": "k",
            "__url__": "u",
            "src.png": b.getvalue(),
            "tgt.png": b.getvalue(),
            "drag.json": json.dumps(d).encode(),
            "drag_mask.png": b.getvalue(),
        }
        out.append(decode_sample(raw, spec)["drag_points"][0].numpy())
    np.testing.assert_allclose(out[0], [10, 20, 30, 25], atol=1e-4)
    np.testing.assert_allclose(out[1], out[0], atol=1e-4)
