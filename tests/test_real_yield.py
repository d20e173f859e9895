"""Real fixed-camera footage of people, hands, animals and traffic (../shared/videos/real2): the
outcomes a user checks by looking at what was written.

* a clip of hands moving objects yields drags on what moves (the hand, the bottle);
* near-duplicate pairs are not written;
* people moving in front of a fixed camera are not taken for a camera move;
* swaying foliage and a subject standing still yield no pair (the pre-screen and the quality stage);
* a small subject far from the camera is drawn and written;
* a mouse that turned round as it ran yields a coarse edit and a collage (re-matched turned);
* a still door whose exposure rose gets no region drag;
* drags between cars in a queue stay on their own car (not the look-alike that took its place);
* the wall an arm uncovered is not tracked back onto the arm;
* a clip that repeats another clip's footage is reported as a duplicate (synthetic).
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import shared_inputs, shared_video
from vid2pair.core.items import PairItem, Reject
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index, read_rejects
from vid2pair.pipeline.plan import build_pair_stages, pair_classes
from vid2pair.pipeline.runners import build
from vid2pair.stages import decode
from vid2pair.stages.evidence import changed_mask, object_region
from vid2pair.stages.pairs import screen_frame, screen_pair

HANDS = "real2/hand_moving_bottles.mp4"
PEOPLE = ("real2/two_people_hug_room.mp4", "real2/asl_sign_book_woman.mkv")
CLIPS = (HANDS, "real2/makeup_hand_face.avi", *PEOPLE)


_inputs = shared_inputs


@pytest.fixture(scope="module")
def out(tmp_path_factory):
    d = tmp_path_factory.mktemp("real_yield")
    cfg = load_config("demo", ["runner.name=local", "runner.progress=false", "pairs.per_shot=3"])
    s = build(cfg, _inputs(d, CLIPS), d / "out", log_summary=False)
    return d / "out", s


def _samples(o: Path) -> dict:
    got: dict = {}
    for tar in sorted((o / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                key, _, member = m.name.partition(".")
                got.setdefault(key, {})[member] = tf.extractfile(m).read()
    return got


def _image(b: bytes) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def test_hands_moving_bottles_yield_drags_on_what_moves(out):
    """Dense flow loses the hand (the issue's probes: unexplained 0.84-0.94 on such pairs); drags come
    from sparse, verified matches and the tracker's verified points, each handle and target on what
    changed, moving at least the visible minimum, the patches agreeing."""
    from vid2pair.stages.evidence import patch_ncc

    o, _ = out
    with_drags = 0
    for key, m in _samples(o).items():
        if not key.startswith("hand_moving_bottles") or "drag.json" not in m:
            continue
        src, tgt = _image(m["src.jpg"]), _image(m["tgt.jpg"])
        changed = object_region(changed_mask(src, tgt, 15.0, 1.5 * 240 / 512), close_px=3, dilate_px=3)
        pts = json.loads(m["drag.json"])["points"]
        assert len(pts) >= 2
        for p in pts:
            (hx, hy), (tx, ty) = p["source"], p["target"]
            assert changed[int(round(hy)), int(round(hx))] and changed[int(round(ty)), int(round(tx))], p
            assert np.hypot(tx - hx, ty - hy) >= 8 * 240 / 512 - 1e-6, p
        ncc = patch_ncc(src, np.array([p["source"] for p in pts]), tgt, np.array([p["target"] for p in pts]), 5)
        assert np.median(ncc) > 0.6, ncc
        with_drags += 1
    assert with_drags >= 1


def test_no_near_duplicate_pairs_are_written(out):
    o, _ = out
    idx = read_index(o)
    assert len(idx) >= 6
    for (clip, shot), g in idx.groupby(["clip_id", "shot"]):
        rows = list(zip(g["src_frame"], g["tgt_frame"], g["fps"]))
        for i, (a, b, fps) in enumerate(rows):
            for a2, b2, _ in rows[:i]:
                sep = 0.5 * fps
                assert not (abs(a - a2) <= sep and abs(b - b2) <= sep), (clip, shot, (a, b), (a2, b2))


def test_people_moving_in_front_of_the_camera_are_not_a_camera_move(out):
    o, _ = out
    rej = read_rejects(o)
    names = [Path(n).name for n in PEOPLE]
    mine = rej[rej["source"].apply(lambda s: Path(s).name in names)]
    assert not (mine["reason"].isin(["camera_moved", "camera_moving", "global_change"])).any(), mine[
        ["source", "reason", "detail"]
    ]
    idx = read_index(o)
    assert set(Path(s).name for s in idx["source"]) >= set(names)  # both yield samples


def _pair(path: str, a: int, b: int, cfg):
    """One candidate pair of a real clip through the preset's pair stages (frames decoded exactly)."""
    with decode.Video(path) as v:
        for _ in v.scan(0, None, decode.scaled_size(v.width, v.height, 128)):
            pass
        idx = list(dict.fromkeys(int(round(x)) for x in np.linspace(a, b, cfg.track.max_frames)))
        frames = decode.apply_frame_policy(v.read(idx, decode.decode_size(v.width, v.height, cfg.frame)), cfg.frame)
    it = PairItem(
        key=f"c_s000_f{a:06d}_f{b:06d}",
        clip_id="c",
        source=path,
        chunk=0,
        clip_idx=0,
        meta={"frame_indices": idx, "fps": 30.0, "src_frame": a, "shot": 0},
        arrays={"frames": frames},
    )
    items = [it]
    for st in build_pair_stages(cfg, pair_classes(cfg)):
        items = st(items)
    return frames, items[0]


@pytest.mark.parametrize(
    "name,a,b,what",
    [
        ("real2/street_traffic_cars.mp4", 806, 847, "leaves swaying, no car"),
        ("real2/people_walk_past_table.mp4", 89, 102, "a woman standing almost still"),
        ("tree.avi", 6, 39, "a tree in the wind"),
    ],
)
def test_swaying_foliage_and_a_still_subject_yield_no_pair(name, a, b, what):
    """The pairs the issue found written as noise: the quality stage rejects them (no solid change, or
    no visible move). The pre-screen is no guard here: at the scan's 128 px, which a small subject far
    from the camera needs (below), the still woman's outline and the swaying tree keep a solid area of
    0.002-0.009 of the frame, as much as the woman raising a cup (0.009), so it draws them."""
    cfg = load_config("demo")
    frames, it = _pair(str(shared_video(name)), a, b, cfg)
    assert isinstance(it, Reject) and it.stage == "quality", (what, it)
    assert it.reason in ("no_visible_change", "no_visible_motion"), (what, it.reason, it.detail)


def test_a_small_subject_far_from_the_camera_is_screened_in_and_written():
    """A woman raising a cup, about a tenth of a 1080p frame's width: the pre-screen at 64 px saw no
    solid change in any of the 72 pairs it drew from this clip; at the scan's 128 px it keeps the
    pair, and the quality stage writes it."""
    cfg = load_config("demo")
    frames, it = _pair(str(shared_video("real2/woman_drinking_room.avi")), 10, 79, cfg)
    kept, sc = screen_pair(screen_frame(frames[0]), screen_frame(frames[-1]), cfg.pairs)
    assert kept, sc
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert {"sketch"} <= set(it.meta["signals"]), it.meta["signals"]


def test_a_clip_that_repeats_another_clips_footage_is_reported(tmp_path):
    """A trimmed, re-encoded copy is found (with its offset); a clip of the same still background with
    another object moving is not a duplicate, nor is an unrelated clip."""
    from vid2pair.pipeline.synthetic import ObjectSpec, make_clip, write_video

    d = tmp_path / "clips"
    a = make_clip(width=320, height=240, n_frames=60, fps=12, n_objects=2, seed=5)
    write_video(a.frames, d / "a.mp4", 12)
    write_video(a.frames[12:], d / "b_copy.mp4", 12, crf=24)
    write_video(make_clip(width=320, height=240, n_frames=60, fps=12, n_objects=2, seed=6).frames, d / "c.mp4", 12)
    same_bg = make_clip(
        width=320,
        height=240,
        n_frames=60,
        fps=12,
        seed=5,
        objects=[ObjectSpec("rect", (40, 30), (200, 100), velocity=(-2, 1), texture_seed=9)],
    )
    write_video(same_bg.frames, d / "d_same_background.mp4", 12)
    cfg = load_config(
        "demo",
        [
            "runner.name=local",
            "runner.progress=false",
            "quality.enabled=false",
            "collage.enabled=false",
            "track.enabled=false",
            "pairs.prescreen=false",
        ],
    )
    s = build(cfg, str(d), tmp_path / "out", log_summary=False)
    dups = s["duplicate_footage"]
    assert [(Path(x["clip"]).name, Path(x["duplicate_of"]).name) for x in dups] == [("b_copy.mp4", "a.mp4")], dups
    assert dups[0]["offset_frames"] == 12 and dups[0]["frames_matched"] >= 30


def test_a_mouse_that_turned_round_as_it_ran_yields_a_coarse_edit():
    """A mouse seen from above runs 27 px and turns by about 125 degrees in 1.3 s: the chained DIS
    flow loses it, and where it was and where it arrived touch (one changed piece). The frames in
    between give a background plate, the mouse as it was is found turned in the target
    (``flow.rematch_turns``), and the coarse edit and the collage draw it where it arrived, with
    holes where it was: before, both were rejected (holes 1.0 x the changed area) and the pair
    did not pass the motion pre-filter once the flow moved only the mouse."""
    cfg = load_config("demo")
    frames, it = _pair(str(shared_video("real2/mouse_round_arena.mp4")), 650, 688, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert {"coarse", "collage", "sketch"} <= set(it.meta["signals"]), it.meta["signals"]
    (rec,) = it.meta["flow"]["rematched"]
    a = np.array(rec["affine"])
    assert abs(np.degrees(np.arctan2(a[1, 0], a[0, 0]))) > 90 and rec["ncc"] >= 0.85, rec
    q = it.meta["quality"]
    for name in ("coarse", "collage"):  # right where it arrived, holes only where it was
        assert q[f"{name}_gain_db"] >= 10 and q[f"{name}_unexplained_frac"] <= 0.05, q
        assert q[f"{name}_hole_ratio"] <= 0.7 and q[f"{name}_false_hole_frac"] <= 1e-4, q


def test_a_still_door_whose_exposure_rose_gets_no_region_drag():
    """real2/makeup_hand_face 31->64: the face and the hand move 20-40 px right while the camera's
    exposure rises. A region on the cabinet door (centre about (56, 38) at 320 x 240, still) was
    written as a 3.8-px translation: in grey levels the door moved by its transform matched the
    brighter target better than the door in place. With each side's grey levels normalised the
    door in place explains it exactly, so the region is refused; the regions on the face and hand
    stay."""
    cfg = load_config("demo")
    frames, it = _pair(str(shared_video("real2/makeup_hand_face.avi")), 31, 64, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert frames.shape[1:3] == (240, 320) and "region_drag" in it.meta["signals"]
    regions = json.loads(it.files["region_drag.json"])["regions"]
    assert len(regions) >= 5, regions
    for r in regions:
        assert np.hypot(r["center"][0] - 56, r["center"][1] - 38) > 30, r
        assert r["shift_px"] >= 6, r


def test_drags_between_cars_in_a_queue_stay_on_their_own_car():
    """Three cars drive away in a queue, each arriving near where the one ahead was. The tracker
    (chained DIS, two hops over 48 frames) and the pair's flow both took the next car for the same
    one: a grey car's handle was dragged onto the black car behind it, 14 px the wrong way. Each
    check on the pair's own images passed (patch NCC, flow agreement, moved-not-still); Lucas-Kanade
    through the frames in between contradicts it (``track.klt_check``). The cars' x extents were read
    off the frames by eye (240-px frames)."""
    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real2/street_traffic_cars.mp4")), 549, 597, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert it.meta["track"]["klt_contradicted_points"] >= 1, it.meta["track"]
    cars = {"white": ((87, 102), (66, 78)), "grey": ((111, 131), (82, 95)), "black": ((152, 190), (129, 146))}
    pts = json.loads(it.files["drag.json"])["points"]
    assert len(pts) >= 2
    for p in pts:
        (xs, ys), (xt, yt) = p["source"], p["target"]
        assert 60 <= ys <= 100 and 60 <= yt <= 100, p
        on = [n for n, ((a, b), (c, d)) in cars.items() if a - 3 <= xs <= b + 3 and c - 3 <= xt <= d + 3]
        assert on, f"drag {p} does not stay on one car"


def test_the_door_an_arm_uncovered_is_not_tracked_onto_the_arm():
    """``real/balle1-vp9`` 6->291: in the source an arm holding a ball covers a door; in the target
    the arm is gone. The tracker (and the flow it agrees with) sent 32 grid points on the door back
    onto the arm, visible, 3-30 px away. The flow stage could not match 29 of those target pixels
    back and forth (``flow_bwd_valid``); with ``track.flow_consistent`` they are invisible. The
    door's box was read off the target frame by eye (240-px frames)."""
    import io

    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real/balle1-vp9.avi")), 6, 291, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    tr = np.load(io.BytesIO(it.files["tracks.npy"]))
    vis = np.load(io.BytesIO(it.files["visibility.npy"])).astype(bool)
    moved = np.linalg.norm(tr[:, 2:] - tr[:, :2], axis=1) > 3
    door = (tr[:, 0] > 60) & (tr[:, 0] < 95) & (tr[:, 1] > 100) & (tr[:, 1] < 140)
    assert door.sum() > 100  # the box holds grid points
    assert (vis & moved & door).sum() <= 5, (vis & moved & door).sum()  # 32 without the rule, 3 with it
    assert vis.mean() > 0.85  # the rest of the grid stays visible


def test_a_pushed_coin_is_not_dragged_onto_the_pen():
    """``real/coin_pen`` 0->68: a pen pushes a coin 120 px left. A Lucas-Kanade corner on the coin's
    edge went with the pen instead and came out as a drag from the coin onto the pen tip, 0.3 px
    from the tracked drag that took the same handle along with the coin (CI drew this pair). The flow
    stage re-matched the coin (a checked template match): no drag and no stored match that starts on
    the coin ends elsewhere, and no two drags share a handle."""
    import io

    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real/coin_pen.avi")), 0, 68, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    (rec,) = it.meta["flow"]["rematched"]
    x, y, w, h = rec["box"]
    move = np.asarray(rec["move"])
    assert np.linalg.norm(move) > 100
    pts = json.loads(it.files["drag.json"])["points"]
    m = np.load(io.BytesIO(it.files["matches.npy"])).reshape(-1, 4)
    rows = [(*p["source"], *p["target"]) for p in pts] + [tuple(r) for r in m]
    on_coin = [r for r in rows if x <= r[0] <= x + w and y <= r[1] <= y + h]
    assert on_coin, rows
    for r in on_coin:
        assert np.linalg.norm(np.subtract(r[2:], r[:2]) - move) < 15, (r, move)
    src = np.array([p["source"] for p in pts])
    assert len(pts) >= 2 and min(np.linalg.norm(a - b) for i, a in enumerate(src) for b in src[i + 1 :]) > 10


def test_sketch_strokes_through_the_road_a_car_left_are_erased():
    """street_traffic_cars 434->478: a car drives up the road and a big SUV leaves the frame. The flow
    on the road the SUV uncovered is noise, and its edges drew a long stroke from the car down to the
    frame's bottom edge. The quality stage erases the stroke pixels not next to verified moving
    content (``quality.sketch_erase_unverified``): the car's outline stays, the road is clean."""
    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real2/street_traffic_cars.mp4")), 434, 478, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    sk = _image(it.files["sketch.png"])[..., 0] > 0
    assert sk.shape[:2] == (240, 320)
    assert sk[105:186, 130:241].sum() >= 700  # the car, where it is in the target
    assert sk[190:].sum() == 0  # the road the SUV left (without the rule: a stroke down to row 235)
    assert it.meta["quality"]["sketch_erased"] >= 0.2, it.meta["quality"]

    cfg.quality.sketch_erase_unverified = False
    _, it = _pair(str(shared_video("real2/street_traffic_cars.mp4")), 434, 478, cfg)
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[190:].sum() > 0  # the rule is what erased it


def test_sketch_strokes_on_a_wall_that_only_darkened_are_erased():
    """makeup_hand_face 103->161: auto-exposure darkens the still wardrobe behind the face by about 24
    grey levels, and the flows agree on a small bogus move there, so the sketch drew strokes on it. Its
    source, exposure fitted, matches the target better in place than moved: those strokes go; the
    strokes on the hand and face stay."""
    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real2/makeup_hand_face.avi")), 103, 161, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    sk = _image(it.files["sketch.png"])[..., 0] > 0
    assert sk[30:95, 0:60].sum() == 0  # the wardrobe
    # the hand and face (2380 px without sketch_lookalike_frac, which also erases the shirt's upper
    # edge and strokes in the hair: they look like the unchanged shirt and hair beside them)
    assert sk[:, 100:].sum() >= 1500

    cfg.quality.sketch_erase_unverified = False
    _, it = _pair(str(shared_video("real2/makeup_hand_face.avi")), 103, 161, cfg)
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[30:95, 0:60].sum() >= 50


def test_a_mouse_that_turned_is_not_given_a_region_drag_that_slides_it():
    """mouse_round_arena 3557->3588: the mouse turns about 90 degrees as it goes; the flow fits its region a
    shear with a shift, whose handles go from its rear to its head. Turned about its centroid first, the
    region matches the target far better (error 0.45 against 0.87): the quality stage removes it
    (``quality.region_turn_ratio``), and the pair keeps its other signals."""
    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real2/mouse_round_arena.mp4")), 3557, 3588, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "region_drag" not in it.meta["signals"], it.meta["signals"]
    assert "sketch" in it.meta["signals"], it.meta["signals"]

    cfg.quality.region_turn_ratio = 0.0
    _, it = _pair(str(shared_video("real2/mouse_round_arena.mp4")), 3557, 3588, cfg)
    assert "region_drag" in it.meta["signals"], it.meta["signals"]


def test_a_walker_cut_out_and_not_pasted_loses_the_collage():
    """vtest 195->213: six walkers move. The collage cuts one out where it was and does not paste it
    where it arrived: wrong on 0.54 of that walker's changed part, but only 0.17 of the whole change
    (under ``max_unexplained_frac`` 0.2). Judged part by part (``max_unexplained_part_frac``), the
    collage goes and the pair keeps its drags and sketch; with the part rule off it was written.
    (Since stop 37 the collage's wrong pieces become holes first, ``quality.collage_piece_max_wrong``,
    and then its gain floor drops it; the part rule is measured here with that off.)"""
    _, it = _pair(str(shared_video("vtest.avi")), 195, 213, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "collage" not in it.meta["signals"] and {"drag", "sketch"} <= set(it.meta["signals"])
    cfg = load_config("demo", ["quality.collage_piece_max_wrong=null"])
    _, it = _pair(str(shared_video("vtest.avi")), 195, 213, cfg)
    q = it.meta["quality"]
    assert "collage" not in it.meta["signals"]
    assert q["collage_unexplained_part_frac"] > 0.45 and q["collage_unexplained_frac"] < 0.2, q

    cfg.quality.max_unexplained_part_frac = None
    cfg.quality.min_gain_db = 1.0  # the gain floor alone drops it too (5.9 dB)
    _, it = _pair(str(shared_video("vtest.avi")), 195, 213, cfg)
    assert "collage" in it.meta["signals"], it.meta["signals"]


@pytest.mark.parametrize(
    "name,a,b",
    [
        ("tree.avi", 18, 54),  # a finger enters at the top right, filled with the sky and leaves
        ("real2/makeup_hand_face.avi", 75, 134),  # she leans in: the face is left where it was
    ],
)
def test_a_large_wrong_piece_loses_the_collage(name, a, b):
    """Two collages reviewers called broken, whose wrong share of the changed region (0.17, 0.16)
    and of its worst part passed: each draws one connected piece wrong on more than 1.3 % of the
    frame (``quality.max_unexplained_piece_frac`` 0.01). The collage goes, the drags and the
    sketch stay; with the rule off the collage was written. (Measured with the holing of wrong
    pieces, ``quality.collage_piece_max_wrong``, off; with it on the collage goes too.)"""
    path = str(shared_video(name))
    _, it = _pair(path, a, b, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "collage" not in it.meta["signals"] and {"drag", "sketch"} <= set(it.meta["signals"])
    off = ["quality.collage_piece_max_wrong=null"]
    _, it = _pair(path, a, b, load_config("demo", off))
    q = it.meta["quality"]
    assert q["collage_unexplained_piece_frac"] > 0.012 and q["collage_unexplained_frac"] < 0.2, q
    assert "collage" not in it.meta["signals"]
    _, it = _pair(
        path, a, b, load_config("demo", [*off, "quality.max_unexplained_piece_frac=null", "quality.min_gain_db=1"])
    )
    assert "collage" in it.meta["signals"], it.meta["signals"]


@pytest.mark.parametrize(
    "name,a,b",
    [
        ("real2/street_traffic_cars.mp4", 565, 615),  # two cars kept where the road is now empty
        ("real2/hand_moving_bottles.mp4", 683, 725),  # a bottle cap kept where the hand lifted it from
        ("real2/two_people_hug_room.mp4", 7, 66),  # a man's shirt and logo kept where he turned away
    ],
)
def test_a_collage_that_leaves_a_mover_behind_is_dropped(name, a, b):
    """Three collages that reviewers called broken: each pastes most movers right but leaves one
    where it was, outside the holes, in pieces under 1 % of the frame and on under a fifth of the
    change. Over the changed pixels they gain 2.3-7.5 dB on no edit, where the collages found right
    gain 9-19: under ``quality.min_gain_db`` (8 dB) the collage goes, the drags and the sketch stay;
    with the floor at 1 dB it was written."""
    path = str(shared_video(name))
    _, it = _pair(path, a, b, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    q = it.meta["quality"]
    # (as made: holing its wrong pieces, quality.collage_piece_max_wrong, does not lift it over the floor)
    assert q.get("collage_gain_as_made_db", q["collage_gain_db"]) < 8.0, q
    assert q["collage_unexplained_piece_frac"] < 0.01, q
    assert "collage" not in it.meta["signals"] and "sketch" in it.meta["signals"], it.meta["signals"]
    assert ("collage", "collage_no_gain") in [(r["signal"], r["reason"]) for r in it.meta["signal_rejects"]]
    _, it = _pair(path, a, b, load_config("demo", ["quality.min_gain_db=1"]))
    assert "collage" in it.meta["signals"], it.meta["signals"]


def test_a_flow_that_misses_a_raised_arm_is_not_written():
    """woman_drinking_room 20->95: she raises a cup to her mouth, arm and cup move about 20 px, and the
    dense flow's largest vector is 5.4 px (a reviewer's find). The coarse edit, the source warped by
    that flow, gains under 8 dB over no edit where the frame changed: the coarse edit goes, and with
    it the flow (``flow_no_gain``); the tracks and the sketch stay. With
    ``quality.flow_needs_coarse_gain`` off the flow was written."""
    path = str(shared_video("real2/woman_drinking_room.avi"))
    _, it = _pair(path, 20, 95, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert it.meta["quality"]["coarse_gain_db"] < 8.0, it.meta["quality"]
    assert "flow" not in it.meta["signals"] and "sketch" in it.meta["signals"], it.meta["signals"]
    assert ("flow", "flow_no_gain") in [(r["signal"], r["reason"]) for r in it.meta["signal_rejects"]]
    _, it = _pair(path, 20, 95, load_config("demo", ["quality.flow_needs_coarse_gain=false"]))
    assert "flow" in it.meta["signals"], it.meta["signals"]


def test_a_flow_that_misses_one_walker_among_several_is_not_written():
    """vtest 669->681: a woman in a red top walks about 25 px right, and the dense flow there is at most
    2-3 px (a reviewer's find). Over the whole change the flow leaves 0.20 unexplained, under
    ``quality.max_unexplained_frac``; of her part of the change, more than half. The flow goes
    (``quality.max_flow_unexplained_part_frac``, 0.5), the drags, tracks and sketch stay; with the
    rule off the flow was written."""
    path = str(shared_video("vtest.avi"))
    _, it = _pair(path, 669, 681, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    q = it.meta["quality"]
    assert q["unexplained_frac"] <= 0.2 < 0.5 < q["unexplained_part_frac"], q
    assert "flow" not in it.meta["signals"] and {"drag", "sketch"} <= set(it.meta["signals"]), it.meta["signals"]
    assert ("flow", "flow_unexplained") in [(r["signal"], r["reason"]) for r in it.meta["signal_rejects"]]
    _, it = _pair(path, 669, 681, load_config("demo", ["quality.max_flow_unexplained_part_frac=null"]))
    assert "flow" in it.meta["signals"], it.meta["signals"]


def test_a_collage_piece_pasted_wrong_becomes_a_hole():
    """two_people_hug_room 2->42: the man on the left leans into a hug and raises his forearms; the
    collage carried them with his body, hanging at his hip, where the target shows his shirt and
    trousers (two reviewers' find, box read off by one of them). Those pieces draw most of what
    changed under them wrong (``quality.collage_piece_max_wrong``): they become holes, and the
    collage, better for it, stays. With the rule off the forearm is drawn there."""
    path = str(shared_video("real2/two_people_hug_room.mp4"))

    def hole_share(over=()):
        _, it = _pair(path, 2, 42, load_config("demo", list(over)))
        assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
        assert "collage" in it.meta["signals"], it.meta["signals"]
        holes = _image(it.files["collage_mask.png"])[..., 0] > 0
        return float(holes[124:145, 104:115].mean()), it.meta["quality"]

    share, q = hole_share()
    assert share >= 0.9 and q["collage_holed_pieces"] >= 1, (share, q)
    off, q_off = hole_share(["quality.collage_piece_max_wrong=null"])
    assert off <= 0.3, off
    assert q["collage_gain_db"] > q_off["collage_gain_db"] + 1.0, (q, q_off)


def test_a_collage_found_right_keeps_its_gain():
    """people_walk_past_table 835->846: a man walks right; reviewers found the collage right (holes on
    the strip he uncovered, residuals only thin halos). It gains well over the 8 dB floor."""
    _, it = _pair(str(shared_video("real2/people_walk_past_table.mp4")), 835, 846, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "collage" in it.meta["signals"] and it.meta["quality"]["collage_gain_db"] > 10, it.meta["quality"]


def _visible_tracks_in(it, box, min_px: float = 2.0, max_px: float = np.inf) -> int:
    """The written sample's visible tracks that move at least ``min_px`` and less than ``max_px``
    and end in ``box`` ``(x0, x1, y0, y1)`` on the target (inclusive)."""
    import io

    tr = np.load(io.BytesIO(it.files["tracks.npy"])).reshape(-1, 4)
    vis = np.load(io.BytesIO(it.files["visibility.npy"])).reshape(-1) > 0
    d = np.linalg.norm(tr[:, :2] - tr[:, 2:], axis=1)
    mv = vis & (d >= min_px) & (d < max_px)
    x0, x1, y0, y1 = box
    return int((mv & (tr[:, 0] >= x0) & (tr[:, 0] <= x1) & (tr[:, 1] >= y0) & (tr[:, 1] <= y1)).sum())


def test_wall_beside_a_bottle_set_down_is_not_tracked_along(monkeypatch):
    """hand_moving_bottles 828->871: a hand sets a bottle down at the left edge. Tracks on the plain
    wall just right of it (targets x 10-30, y 100-150 at 320 x 240) were carried 15-28 px with it:
    at their handle's end the bottle now covers the wall, so moved beats in place there. At their
    target end the wall was there all along: the tracks judge (``moved_not_still`` at both ends) hides
    them. Judged at one end only, at least 4 stay visible."""
    import vid2pair.stages.track as track

    def carried(it) -> int:
        return _visible_tracks_in(it, (10, 30, 100, 150))

    cfg = load_config("demo")
    _, it = _pair(str(shared_video(HANDS)), 828, 871, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert carried(it) == 0

    one_end = track.moved_not_still
    monkeypatch.setattr(track, "moved_not_still", lambda s, t, m, both_ends=False: one_end(s, t, m))
    cfg.quality.track_lookalike_px = None  # (the wall also looks like the still wall beside it)
    _, it = _pair(str(shared_video(HANDS)), 828, 871, cfg)
    assert carried(it) >= 4


def test_a_ball_is_not_rematched_onto_a_coat_of_another_colour():
    """balle1 96->288: a 16-px red ball on a pole was re-matched 168 px away onto a man's white coat
    (shape NCC 0.81, mean grey difference 34): its tracks jumped there and its region drag sent it
    there. ``flow.rematch_max_diff`` (20) refuses the look-alike: no re-match, no track moves more
    than 100 px. With the check off, the re-match and the jumping tracks are back."""

    def jumps(it) -> int:
        return _visible_tracks_in(it, (0, 320, 0, 240), min_px=100.0)

    cfg = load_config("demo")
    _, it = _pair(str(shared_video("real/balle1-vp9.avi")), 96, 288, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert not it.meta["flow"].get("rematched") and jumps(it) == 0, it.meta["flow"].get("rematched")

    cfg.flow.rematch_max_diff = None
    _, it = _pair(str(shared_video("real/balle1-vp9.avi")), 96, 288, cfg)
    (rec,) = it.meta["flow"]["rematched"]
    assert np.hypot(*rec["move"]) > 150 and jumps(it) >= 1, rec


def test_wall_crossed_by_a_soft_shadow_is_not_tracked(monkeypatch):
    """hand_moving_bottles 479->515: a gloved hand reaches down to a bottle, and its soft shadow
    crosses the bare wall. Tracks on that wall (targets x 64-112, y 31-73 at 320 x 240) followed
    the shadow 20-34 px: plain, the wall matches itself moved as well as in place. The tracks judge
    hides moving tracks that are plain at both ends: at most 15 of those stay visible, against at
    least 40 without that rule."""
    import vid2pair.stages.track as track

    def on_wall(it) -> int:
        return _visible_tracks_in(it, (64, 112, 31, 73))

    cfg = load_config("demo")
    _, it = _pair(str(shared_video(HANDS)), 479, 515, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert on_wall(it) <= 15

    monkeypatch.setattr(track, "plain_patches", lambda img, pts: np.zeros(len(pts), bool))
    cfg.quality.track_lookalike_px = None  # (the wall also looks like the still wall beside it)
    _, it = _pair(str(shared_video(HANDS)), 479, 515, cfg)
    assert on_wall(it) >= 40


@pytest.mark.parametrize(
    "name,a,b,box",
    [
        ("real2/makeup_hand_face.avi", 75, 134, (258, 277, 199, 231)),  # the neck, where the wrist's edge was
        ("real2/asl_sign_book_woman.mkv", 2, 36, (291, 310, 144, 162)),  # an office chair behind her
    ],
)
def test_sketch_strokes_where_a_limb_used_to_be_are_erased(monkeypatch, name, a, b, box):
    """The flow smears a hand's or an arm's move over the background it uncovers, and the sketch drew
    the outline of where the limb used to be: a squiggle on the neck of `makeup_hand_face` 75->134, and
    strokes on a chair behind the signer of `asl_sign_book_woman` 2->36. A stroke pixel now needs an
    edge nearby that the target has and the source has not (``sketch.NEW_EDGE_GREY``): none is left in
    those boxes, while at least 50 pixels are without that test; the sketch stays."""
    import vid2pair.stages.sketch as sketch

    x0, x1, y0, y1 = box
    cfg = load_config("demo")
    _, it = _pair(str(shared_video(name)), a, b, cfg)
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "sketch" in it.meta["signals"], it.meta["signals"]
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0:y1, x0:x1].sum() == 0

    monkeypatch.setattr(sketch, "NEW_EDGE_GREY", -1e9)  # every pixel has a new edge
    cfg.quality.sketch_lookalike_frac = None  # which also erases the strokes on the chair
    _, it = _pair(str(shared_video(name)), a, b, cfg)
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0:y1, x0:x1].sum() >= 50


@pytest.mark.parametrize(
    "name,a,b,box",
    [
        ("real2/mouse_openfield_topdown.mp4", 2059, 2099, (145, 155, 23, 29)),  # the wall base the mouse had covered
        ("real2/hand_moving_bottles.mp4", 683, 725, (129, 139, 159, 169)),  # the table edge a bottle had covered
        ("real2/silent_film_street.mp4", 23, 56, (83, 101, 67, 73)),  # the hedge line behind a shoulder
        ("real2/street_traffic_cars.mp4", 565, 615, (0, 26, 35, 86)),  # leaves that swayed
    ],
)
def test_sketch_strokes_on_background_a_mover_uncovered_are_erased(name, a, b, box):
    """Where a mover used to be the target shows background whose edges are new there (the mover had
    hidden them), and the flow's noise there drew strokes on them: a 47-px loop on the wall base a
    mouse had left, a stroke on the table edge a bottle was lifted from, the hedge behind a shoulder
    (reviewers' boxes); swaying leaves draw the same. Those strokes look like the still background next
    to them (``quality.sketch_lookalike_frac``): their pieces go, the sketch stays. With the rule off
    at least 30 stroke pixels are in each box."""
    x0, x1, y0, y1 = box
    path = str(shared_video(name))
    _, it = _pair(path, a, b, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "sketch" in it.meta["signals"], it.meta["signals"]
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0 : y1 + 1, x0 : x1 + 1].sum() == 0
    # (the wall-base loop's piece is also too short once erased: the dot rule, off here too, takes it)
    off = ["quality.sketch_lookalike_frac=null", "quality.sketch_min_stroke_px=0"]
    _, it = _pair(path, a, b, load_config("demo", off))
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0 : y1 + 1, x0 : x1 + 1].sum() >= 30


@pytest.mark.parametrize(
    "name,a,b,handle",
    [
        ("real2/silent_film_street.mp4", 23, 56, (207.0, 207.5)),  # still pavement beside a walker's feet
        ("real2/silent_film_street.mp4", 155, 191, (34.0, 183.0)),  # the same, another walker
    ],
)
def test_a_drag_from_still_pavement_is_removed(name, a, b, handle):
    """A drag's handle on pavement that is the same pavement in the target, 1-3 px from a walker's
    feet (a reviewer's find: "it claims an 11 px motion of static pavement"). Its 11x11 patches hold
    the walker's edge, so the patch rules pass it; the 3x3 pixels under the handle changed by 5 grey
    levels, under ``quality.drag_end_min_change`` (6). The drag goes, the other drags stay; with the
    rule off it was written."""
    path = str(shared_video(name))

    def handles(over=()):
        _, it = _pair(path, a, b, load_config("demo", list(over)))
        assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
        assert "drag" in it.meta["signals"], it.meta["signals"]
        return np.array([p["source"] for p in json.loads(it.files["drag.json"])["points"]], np.float32)

    near = lambda h: np.linalg.norm(h - np.float32(handle), axis=1).min()  # noqa: E731
    assert near(handles()) > 3.0
    assert near(handles(["quality.drag_end_min_change=0"])) < 1.0


@pytest.mark.parametrize(
    "name,a,b,box",
    [
        ("vtest.avi", 669, 681, (140, 150, 80, 91)),  # sand a walker's legs had covered
        ("real/balle1-vp9.avi", 1, 193, (59, 68, 130, 140)),  # window frame a hand had covered
    ],
)
def test_sketch_dots_left_on_background_are_erased(name, a, b, box):
    """Reviewers' finds: a 41-px blob on empty sand where a walker's legs were, a 34-px dot on the
    window frame where the hand holding the ball was. Each is what the erasing of unverified stroke
    pixels left of a longer stroke: one stroke width across, with a centre line of a few pixels, it
    outlines nothing. Pieces with a centre line under ``quality.sketch_min_stroke_px`` go; the rest of
    the sketch stays. With the rule off at least 30 stroke pixels are in each box."""
    x0, x1, y0, y1 = box
    path = str(shared_video(name))
    _, it = _pair(path, a, b, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert "sketch" in it.meta["signals"], it.meta["signals"]
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0 : y1 + 1, x0 : x1 + 1].sum() == 0
    _, it = _pair(path, a, b, load_config("demo", ["quality.sketch_min_stroke_px=0"]))
    assert (_image(it.files["sketch.png"])[..., 0] > 0)[y0 : y1 + 1, x0 : x1 + 1].sum() >= 30


def test_a_drag_onto_another_walker_beside_one_that_follows_him_goes():
    """vtest 695->720 (a reviewer's find): a man in a black jacket walks 41 px right. One drag takes
    his head along; another, from his hip 16 px below, goes 13 px left onto a woman in a blue jacket
    who is there in the target. Each passes the patch rules; together they would tear the man apart
    (55 px apart in move, 16 px apart in handle). Both go (``quality.drag_tear_reach_px``), and with
    one drag left the pair loses its drag signal; with the rule off the hip drag was written."""
    path = str(shared_video("vtest.avi"))

    def drags(over=()):
        _, it = _pair(path, 695, 720, load_config("demo", list(over)))
        assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
        return [] if "drag.json" not in it.files else json.loads(it.files["drag.json"])["points"]

    hip = lambda pts: [p for p in pts if np.hypot(p["source"][0] - 71, p["source"][1] - 88) < 3]  # noqa: E731
    assert not hip(drags())
    (p,) = hip(drags(["quality.drag_tear_reach_px=0"]))
    assert p["target"][0] - p["source"][0] < -10  # left, while the man walks right


def test_the_plain_back_of_a_moving_hand_is_not_shown_still():
    """``real2/makeup_hand_face`` 17->44: a hand moves 9-13 px right in front of a face. The back of
    the hand is plain skin, so source and target agree at each of its pixels and ``hold_still``
    held 294 of its grid points still and visible (a reviewer's count, box read off the target at
    320 x 240). The tracker had moved them: with ``track.hold_still_plain_max_px`` they are hidden."""
    box = (211, 256, 133, 199)
    path = str(shared_video("real2/makeup_hand_face.avi"))
    _, it = _pair(path, 17, 44, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert _visible_tracks_in(it, box, 0.0, 1.0) <= 10, _visible_tracks_in(it, box, 0.0, 1.0)
    assert it.meta["track"]["still_plain_hidden_points"] > 200
    assert {"drag", "tracks", "sketch"} <= set(it.meta["signals"])
    _, it = _pair(path, 17, 44, load_config("demo", ["track.hold_still_plain_max_px=null"]))
    assert _visible_tracks_in(it, box, 0.0, 1.0) >= 200


@pytest.mark.parametrize(
    "name,a,b,box,most,least_off",
    [
        # pavement 8-12 px to the right of a walking man, tracked 17-21 px with him (10 tracks)
        ("real2/street_pedestrians_high.mp4", 225, 256, (45, 60, 102, 116), 1, 8),
        # carpet seen through a dog's curled tail, tracked 12-17 px with the tail (15, then 42)
        ("real2/dog_tricks_treat.avi", 118, 163, (70, 82, 196, 211), 4, 12),
        ("real2/dog_tricks_treat.avi", 155, 200, (55, 70, 190, 211), 14, 35),
    ],
)
def test_background_beside_a_mover_is_not_tracked_along_with_it(name, a, b, box, most, least_off):
    """Reviewers found still background next to a mover tracked along with it. Its patches match
    moved as well as right tracks do (plain carpet matches plain carpet), but it looks like the still
    background beside it: ``quality.track_lookalike_px`` hides such tracks. The boxes were read off
    the target by eye (320 x 240); with the rule off, 10, 15 and 42 tracks there are visible."""
    path = str(shared_video(name))
    _, it = _pair(path, a, b, load_config("demo"))
    assert not isinstance(it, Reject), (it.stage, it.reason, it.detail)
    assert _visible_tracks_in(it, box) <= most, _visible_tracks_in(it, box)
    assert _visible_tracks_in(it, (0, 320, 0, 240)) >= 150  # the mover keeps its tracks
    _, it = _pair(path, a, b, load_config("demo", ["quality.track_lookalike_px=null"]))
    assert _visible_tracks_in(it, box) >= least_off, _visible_tracks_in(it, box)
