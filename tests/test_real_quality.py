"""Real footage (../shared/videos): the outcomes a user would check by looking at the pairs.

* the plain-desk coin clips are decided as fixed-camera;
* their drag handles lie on the coin or the pen (what changes), never on the still desk;
* the screen recording yields no pair in which nothing visibly changes;
* every written sample of the real clips passes the quality stage's own rules when judged again
  from what was written (images, flows, signals);
* every candidate pair is written or rejected with a reason.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from tests.conftest import shared_inputs
from vid2pair.core.items import PairItem
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index, read_rejects
from vid2pair.pipeline.plan import signal_judges
from vid2pair.pipeline.runners import build
from vid2pair.stages.evidence import changed_mask
from vid2pair.stages.quality import judge

COINS = ("real/coin_pen.avi", "real/motion.mov")
CLIPS = (*COINS, "real/movie-hello.mp4", "real/Principe_inertie.avi", "tree.avi")


_inputs = shared_inputs


def _cfg(*more):
    return load_config(
        "demo",
        [
            "runner.name=local",
            "runner.progress=false",
            "pairs.per_shot=4",
            "output.image_format=png",
            "output.flow=float32",
            *more,
        ],
    )


@pytest.fixture(scope="module")
def real_out(tmp_path_factory):
    d = tmp_path_factory.mktemp("real")
    s = build(_cfg(), _inputs(d, CLIPS), d / "out", log_summary=False)
    return d / "out", s


def _samples(out: Path):
    for tar in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            groups: dict = {}
            for m in tf.getmembers():
                key, _, member = m.name.partition(".")
                groups.setdefault(key, {})[member] = tf.extractfile(m).read()
        yield from groups.items()


def _img(b: bytes, mode="RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(b)).convert(mode))


def _item(key: str, m: dict) -> PairItem:
    meta = json.loads(m["meta.json"])
    arrays = {"src": _img(m["src.png"]), "tgt": _img(m["tgt.png"])}
    if "matches.npy" in m:  # the verified correspondences the quality stage judged with
        arrays["matches"] = np.load(io.BytesIO(m["matches.npy"]), allow_pickle=False)
    for name in ("flow", "flow_bwd"):
        if f"{name}.npy" in m:
            arrays[name] = np.load(io.BytesIO(m[f"{name}.npy"]), allow_pickle=False).astype(np.float32)
    for name in ("coarse", "collage"):
        if f"{name}.png" in m:
            arrays[name], arrays[f"{name}_mask"] = _img(m[f"{name}.png"]), _img(m[f"{name}_mask.png"], "L")
    if "sketch.png" in m:
        arrays["sketch"] = _img(m["sketch.png"], "L")
    if "region_masks.png" in m:
        arrays["region_masks"] = _img(m["region_masks.png"], "L")
        meta["region_drag"] = json.loads(m["region_drag.json"])
    if "drag.json" in m:
        meta["drag"] = json.loads(m["drag.json"])
    return PairItem(
        key=key, clip_id=meta["clip_id"], source=meta["source"], chunk=0, clip_idx=0, meta=meta, arrays=arrays
    )


def test_plain_desk_coin_clips_are_fixed_camera(real_out):
    out, _ = real_out
    rej = read_rejects(out)
    for name in COINS:
        here = rej[rej["source"].str.endswith(Path(name).name)]
        assert not (here["stage"] == "static_camera").any(), here[["stage", "reason", "detail"]]


def test_every_candidate_is_accounted_for(real_out):
    out, s = real_out
    assert s["all_inputs_accounted"]
    rej = read_rejects(out)
    assert (rej["reason"].astype(str) != "").all() and (rej["stage"].astype(str) != "").all()
    q = rej[rej["stage"] == "quality"]
    assert len(q) and q["detail"].str.len().min() > 10  # the numbers are in the detail


def test_the_screen_recording_yields_no_pair_where_nothing_changes(tmp_path):
    """A terminal being typed in and a small webcam inset: nothing moves into place (a blinking
    cursor, a few characters). The pre-screen finds no visible, local change among the draws, so no
    candidate is spent on it, and the shot is recorded with that reason; whatever is written
    changes visibly."""
    out = tmp_path / "out"
    build(_cfg("pairs.per_shot=8"), _inputs(tmp_path, ["real/movie-hello.mp4"]), out, log_summary=False)
    for key, m in _samples(out):
        src, tgt = _img(m["src.png"]), _img(m["tgt.png"])
        frac = changed_mask(src, tgt, 15.0, 1.5 * min(src.shape[:2]) / 512).mean()
        assert frac >= 0.003, (key, frac)
    rej = read_rejects(out)
    mine = rej[rej["source"].str.endswith("movie-hello.mp4") & (rej["level"] != "signal")]  # whole pairs and shots
    assert len(mine) and set(mine["reason"]) <= {"no_visible_change", "no_visible_motion", "unmatched_change"}, mine
    assert "pairs.prescreen" in " ".join(mine["detail"]) or (mine["stage"] == "quality").all()


def test_every_written_sample_passes_the_quality_rules_again(real_out):
    out, s = real_out
    cfg = _cfg()
    assert s["samples"] >= 2, s  # at least some real pairs survive
    q = cfg.quality
    rejudged = 0
    for key, m in _samples(out):
        it = _item(key, m)
        carried = set(it.meta["signals"])
        dropped = {r["signal"] for r in it.meta.get("signal_rejects", ())}
        assert not (dropped & carried), (key, dropped, carried)
        if "flow" not in it.arrays:
            # the quality stage judged this flow wrong and dropped it, so the pair cannot be judged
            # again without it: its recorded scores must still pass the pair rules
            sc = it.meta["quality"]
            scale = min(it.arrays["src"].shape[:2]) / 512
            assert "flow" in dropped, (key, dropped)
            assert sc["solid_frac"] >= q.min_solid_frac, (key, sc)
            assert sc["motion_px"] >= q.min_motion_px * scale or sc["moving_matches"] >= 2, (key, sc)
            assert sc["motion_ratio"] >= q.min_motion_ratio, (key, sc)
            assert sc["orphan_blob_frac"] <= q.max_unexplained_blob_frac, (key, sc)
            continue
        sc, pair_fail, sig_fail = judge(it, q, signal_judges())
        assert not pair_fail, (key, pair_fail, sc)
        assert not (set(sig_fail) & carried), (key, sig_fail, sc)
        rejudged += 1
    assert rejudged >= 1, s


def test_coin_drags_lie_on_the_coin_or_the_pen(tmp_path):
    """With the quality stage off (so every candidate keeps its drags), every drag handle of the coin
    clips is on what changes between source and target: the coin or the pen, never the plain desk."""
    out = tmp_path / "out"
    build(
        _cfg("quality.enabled=false", "coarse.enabled=false", "collage.enabled=false", "sketch.enabled=false"),
        _inputs(tmp_path, COINS),
        out,
        log_summary=False,
    )
    n_drags = 0
    for key, m in _samples(out):
        if "drag.json" not in m:
            continue
        src, tgt = _img(m["src.png"]), _img(m["tgt.png"])
        s = min(src.shape[:2]) / 512
        changed = changed_mask(src, tgt, 15.0, 1.5 * s)
        near = cv2.dilate(changed.astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        for p in json.loads(m["drag.json"])["points"]:
            for xy in (p["source"], p["target"]):
                x, y = int(round(xy[0])), int(round(xy[1]))
                assert near[y, x], (key, p)
            n_drags += 1
    assert n_drags >= 2, n_drags  # not vacuous (4 measured alone, 2 in a CI run of the whole suite)
    idx = read_index(out)
    assert len(idx) >= 4


def test_the_coin_clips_yield_pairs_with_the_coin_moved(real_out):
    """The pen flicks the coin ~100 px in a few blurred frames; the chain through them loses it. The
    coin is re-matched between source and target (flow.rematch) or followed by verified sparse matches
    (drag.matches), and the written pairs' coarse edits
    put it where it arrived (measured: 3 pairs a clip at per_shot 3, coarse edits +19 dB over no edit
    on what changed). Before re-matching no coin pair was written."""
    out, _ = real_out
    for name in COINS:
        metas = [json.loads(m["meta.json"]) for key, m in _samples(out) if key.startswith(Path(name).stem + "-")]
        assert len(metas) >= 2, (name, len(metas))
        for meta in metas:
            moves = [r["move"] for r in meta["flow"].get("rematched", [])]
            q = meta["quality"]
            # re-matched by the flow stage, or followed by verified sparse matches (drag.matches)
            assert (moves and max(np.hypot(*mv) for mv in moves) > 40) or (
                q["moving_matches"] >= 2 and q["motion_px"] > 40
            ), (name, moves, q)
            assert q.get("coarse_gain_db") is None or q["coarse_gain_db"] > 6, (name, q)
