"""Objects the dense flow lost, matched directly between source and target (stages/rematch.py).

Synthetic pairs whose true move is known: a textured disc on a plain desk jumps 70 px (and grows by
10 %, as a coin coming closer to the camera does) while it is hidden in the frames in between, so
a chained DIS flow cannot follow it."""

from __future__ import annotations

import cv2
import numpy as np

from vid2pair.core.items import PairItem
from vid2pair.pipeline.config import load_config
from vid2pair.stages.evidence import fb_consistent
from vid2pair.stages.flow import FlowStage
from vid2pair.stages.rematch import COVERED, rematch_objects, split_segments

H, W = 240, 320
C0 = np.array([230.0, 80.0])  # disc centre on the source
MOVE = np.array([-70.0, 45.0])  # its move
SCALE = 1.1


def _desk() -> np.ndarray:
    rng = np.random.default_rng(0)
    g = 180 + rng.normal(0, 1.5, (H, W))  # a plain desk with sensor noise
    return np.repeat(g[..., None], 3, axis=2)


def _disc_texture() -> np.ndarray:
    rng = np.random.default_rng(1)
    t = cv2.GaussianBlur(rng.uniform(40, 200, (64, 64)).astype(np.float32), (0, 0), 1.5)
    return np.repeat(t[..., None], 3, axis=2)


def _place(img: np.ndarray, centre, scale: float, radius: float = 16.0) -> np.ndarray:
    """The textured disc drawn onto ``img`` at ``centre``, ``scale`` times its size."""
    tex = _disc_texture()
    a = np.float32([[scale, 0, centre[0] - 32 * scale], [0, scale, centre[1] - 32 * scale]])
    warped = cv2.warpAffine(tex, a, (W, H), flags=cv2.INTER_LINEAR)
    yy, xx = np.mgrid[0:H, 0:W]
    inside = np.hypot(xx - centre[0], yy - centre[1]) <= radius * scale
    out = img.copy()
    out[inside] = warped[inside]
    return out


def _pair():
    desk = _desk()
    src = _place(desk, C0, 1.0)
    tgt = _place(desk, C0 + MOVE, SCALE)
    return np.clip(src, 0, 255).astype(np.uint8), np.clip(tgt, 0, 255).astype(np.uint8), desk


def _true_flow(xy: np.ndarray) -> np.ndarray:
    """Where a source point of the disc lands: scaled about the disc centre, then moved."""
    return C0 + MOVE + SCALE * (xy - C0) - xy


def test_a_lost_object_is_rematched_to_where_it_arrived():
    src, tgt, _ = _pair()
    zero = np.zeros((H, W, 2), np.float32)  # the dense flow lost the disc entirely
    flow, bwd, dest, pieces, rec = rematch_objects(src, tgt, zero, zero.copy(), sigma=0.7, close_px=1)
    assert len(rec) == 1 and rec[0]["ncc"] >= 0.85, rec
    yy, xx = np.mgrid[0:H, 0:W]
    disc = np.hypot(xx - C0[0], yy - C0[1]) <= 14  # inside the source disc (away from its outline)
    xy = np.stack([xx[disc], yy[disc]], 1).astype(np.float64)
    err = np.linalg.norm(flow[disc] - _true_flow(xy), axis=1)
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 1.5, (np.median(err), np.percentile(err, 95))
    arrived = np.hypot(xx - (C0 + MOVE)[0], yy - (C0 + MOVE)[1]) <= 16 * SCALE
    iou = (dest & arrived).sum() / (dest | arrived).sum()
    assert iou > 0.85, iou
    # forward and backward agree on the disc; what it uncovers and covers is still background
    assert fb_consistent(flow, bwd)[disc].mean() > 0.95
    assert np.abs(bwd[disc & ~arrived]).max() == 0 and np.abs(flow[arrived & ~disc]).max() == 0
    assert (pieces[disc] == 1).all() and (pieces[arrived & ~disc] == COVERED).mean() > 0.95


def test_no_rematch_when_the_object_leaves_or_changes_or_the_flow_had_it():
    src, tgt, desk = _pair()
    zero = np.zeros((H, W, 2), np.float32)
    gone = np.clip(desk, 0, 255).astype(np.uint8)  # the disc left the frame: nothing to match
    assert rematch_objects(src, gone, zero, zero.copy(), sigma=0.7, close_px=1)[4] == []
    rng = np.random.default_rng(5)  # another object arrives: its texture does not correlate
    other = tgt.copy()
    yy, xx = np.mgrid[0:H, 0:W]
    arrived = np.hypot(xx - (C0 + MOVE)[0], yy - (C0 + MOVE)[1]) <= 16 * SCALE
    other[arrived] = rng.integers(0, 255, (int(arrived.sum()), 3))
    assert rematch_objects(src, other, zero, zero.copy(), sigma=0.7, close_px=1)[4] == []
    # the dense flow already follows the disc: left as it is
    good, back, *_ = rematch_objects(src, tgt, zero, zero.copy(), sigma=0.7, close_px=1)
    again = rematch_objects(src, tgt, good, back, sigma=0.7, close_px=1)
    assert again[4] == [] and np.array_equal(again[0], good)


def test_a_look_alike_of_another_brightness_is_no_rematch():
    """What arrives has the disc's texture 40 grey levels brighter: it correlates like the disc (NCC
    ignores gain and offset) but differs by tens of grey levels, as a red ball matched onto a white coat
    does. With ``max_diff`` 20 it is refused; the disc itself (a few levels off after
    its scaling) still is re-matched."""
    src, tgt, _ = _pair()
    zero = np.zeros((H, W, 2), np.float32)
    yy, xx = np.mgrid[0:H, 0:W]
    arrived = np.hypot(xx - (C0 + MOVE)[0], yy - (C0 + MOVE)[1]) <= 16 * SCALE
    pale = tgt.copy()
    pale[arrived] = np.clip(tgt[arrived].astype(np.float32) + 40, 0, 255).astype(np.uint8)
    assert len(rematch_objects(src, pale, zero, zero.copy(), sigma=0.7, close_px=1)[4]) == 1
    assert rematch_objects(src, pale, zero, zero.copy(), sigma=0.7, close_px=1, max_diff=20.0)[4] == []
    assert len(rematch_objects(src, tgt, zero, zero.copy(), sigma=0.7, close_px=1, max_diff=20.0)[4]) == 1


def test_split_segments_makes_each_object_one_segment_and_drops_what_it_covers():
    labels = np.zeros((4, 6), np.int32)
    labels[:, 3:] = 1
    pieces = np.zeros((4, 6), np.uint8)
    pieces[1:3, 2:4] = 1  # an object across the two segments
    pieces[0, 5] = COVERED  # background it covers in the target
    out = split_segments(labels, pieces)
    assert out[0, 5] == -1
    assert len(np.unique(out[1:3, 2:4])) == 1  # one segment, across the old boundary
    obj = out[1, 2]
    assert (out[pieces == 0] != obj).all() and len(np.unique(out[out >= 0])) == 3


def test_flow_stage_follows_an_object_hidden_between_source_and_target():
    """The disc is hidden in every frame in between: the chained DIS flow cannot follow it; with
    ``flow.rematch`` the pair's flows carry its move, forward-backward consistent."""
    src, tgt, desk = _pair()
    mid = np.clip(desk, 0, 255).astype(np.uint8)
    frames = np.stack([src] + [mid] * 6 + [tgt])
    yy, xx = np.mgrid[0:H, 0:W]
    disc = np.hypot(xx - C0[0], yy - C0[1]) <= 14
    xy = np.stack([xx[disc], yy[disc]], 1).astype(np.float64)
    errs = {}
    for on in (True, False):
        cfg = load_config("demo", [f"flow.rematch={str(on).lower()}"])
        it = PairItem(
            key="k",
            clip_id="c",
            source="s",
            chunk=0,
            clip_idx=0,
            meta={"fps": 10.0, "frame_indices": list(range(8))},
            arrays={"frames": frames},
        )
        (out,) = FlowStage(cfg).process([it])
        errs[on] = np.median(np.linalg.norm(out.arrays["flow"][disc] - _true_flow(xy), axis=1))
        if on:
            assert out.meta["flow"]["rematched"] and out.arrays["flow_valid"][disc].mean() > 0.9
            assert out.arrays["rematched"].sum() > 0.8 * disc.sum()
    assert errs[True] < 1.0 and errs[False] > 20, errs


def _elongated(img: np.ndarray, m: np.ndarray) -> np.ndarray:
    """A dark textured body, 44 x 16 px (a mouse seen from above), drawn onto ``img`` by the 2x3 map
    ``m`` from its own frame (centred on ``C1``, lying along x)."""
    rng = np.random.default_rng(3)
    tex = cv2.GaussianBlur(rng.uniform(20, 110, (H, W)).astype(np.float32), (0, 0), 1.2)
    yy, xx = np.mgrid[0:H, 0:W]
    body = (((xx - C1[0]) / 22.0) ** 2 + ((yy - C1[1]) / 8.0) ** 2 <= 1.0).astype(np.float32)
    tex_m = cv2.warpAffine(tex, m, (W, H), flags=cv2.INTER_LINEAR)
    body_m = cv2.warpAffine(body, m, (W, H), flags=cv2.INTER_LINEAR)
    return img * (1 - body_m[..., None]) + (tex_m * body_m)[..., None]


C1 = np.array([150.0, 120.0])  # the body's centre on the source
TURN, STEP = 80.0, np.array([24.0, 8.0])  # it turns by 80 degrees and moves less than its length


def test_a_body_that_turned_and_moved_less_than_its_length_is_found_with_the_plate():
    """Where it was and where it arrived touch: one changed piece, which no template of the piece
    finds. The frames in between (it went round the desk and came back) give a background plate; the
    part of the piece that is not the plate is the body as it was, found turned by 80 degrees. Its
    flow is its true move, and the coarse edit leaves holes only where it was."""
    from vid2pair.stages.coarse import coarse_edit

    desk = _desk()
    move = cv2.getRotationMatrix2D(tuple(C1), TURN, 1.0)
    move[:, 2] += STEP
    src = np.clip(_elongated(desk, np.float32([[1, 0, 0], [0, 1, 0]])), 0, 255).astype(np.uint8)
    tgt = np.clip(_elongated(desk, move.astype(np.float32)), 0, 255).astype(np.uint8)
    away = [np.float32([[1, 0, -90 + 30 * k], [0, 1, 90]]) for k in range(6)]  # round the desk's edge
    frames = np.stack([src] + [np.clip(_elongated(desk, a), 0, 255).astype(np.uint8) for a in away] + [tgt])
    zero = np.zeros((H, W, 2), np.float32)
    kw = dict(sigma=0.7, close_px=1, turns=12)
    assert rematch_objects(src, tgt, zero, zero.copy(), **kw)[4] == []  # no plate: one piece, not matched
    flow, bwd, dest, _, rec = rematch_objects(src, tgt, zero, zero.copy(), frames=frames, **kw)
    assert len(rec) == 1 and rec[0]["ncc"] >= 0.9, rec
    yy, xx = np.mgrid[0:H, 0:W]
    body = ((xx - C1[0]) / 20.0) ** 2 + ((yy - C1[1]) / 6.0) ** 2 <= 1.0  # inside it, off its outline
    xy = np.stack([xx[body], yy[body]], 1).astype(np.float64)
    err = np.linalg.norm(flow[body] - (xy @ move[:, :2].T + move[:, 2] - xy), axis=1)
    assert np.median(err) < 0.5 and np.percentile(err, 95) < 1.5, (np.median(err), np.percentile(err, 95))
    arrived = cv2.warpAffine(body.astype(np.uint8), move, (W, H), flags=cv2.INTER_NEAREST) > 0
    was = cv2.dilate((((xx - C1[0]) / 22.0) ** 2 + ((yy - C1[1]) / 8.0) ** 2 <= 1.0).astype(np.uint8), np.ones((5, 5)))
    f = flow.copy()
    f[~fb_consistent(flow, bwd)] = np.nan
    _, holes, _ = coarse_edit(src, f, "soft", tgt=tgt)
    holes = holes > 0
    assert holes[arrived].mean() < 0.02, holes[arrived].mean()  # the body is drawn where it arrived
    # holes where it was, and on the arrived outline only (a turned outline splats at under full
    # density): none farther than 1.5 px from it
    outline = cv2.dilate(cv2.warpAffine(was, move, (W, H), flags=cv2.INTER_NEAREST), np.ones((3, 3))) > 0
    assert holes.sum() > 0.3 * (was > 0).sum() and (holes & (was == 0) & ~outline).sum() == 0
    assert (holes & (was == 0)).sum() < 0.1 * holes.sum()
