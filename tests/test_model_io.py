"""A model stage's share of a pair (pipeline.plan: slim, mark_unchanged, merge_back): the Ray runner
sends a model stage only the arrays it reads, and gets back only what it made or changed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from vid2pair.core.items import PairItem, Reject
from vid2pair.core.stage import pair_reject
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.transfer import SAME, mark_unchanged, merge_back, slim


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out, "shards").glob("*.tar"))}


def _pair(**arrays) -> PairItem:
    return PairItem(key="k", clip_id="c", source="s.mp4", chunk=0, clip_idx=0, meta={"m": 1}, arrays=arrays)


def _frames(t=4, h=24, w=32):
    return np.random.default_rng(0).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def test_slim_keeps_only_the_arrays_read():
    fr = _frames()
    it = _pair(frames=fr, flow=np.zeros((24, 32, 2), np.float32), sketch=np.zeros((24, 32), np.uint8))
    it.files = {"src.jpg": b"x"}
    (s,) = slim([it, Reject("s.mp4", "c", 0, 0, "x", "y")], ("frames", "still"))
    assert set(s.arrays) == {"frames"} and s.arrays["frames"] is fr and s.files == {} and s.meta == {"m": 1}


def test_rows_of_what_was_sent_do_not_travel_back_and_are_rebuilt_from_the_callers_copy():
    fr = _frames()
    sent = {"frames": fr.copy()}
    before = {"frames": fr}
    flow = np.ones((24, 32, 2), np.float32)
    out = {"src": sent["frames"][0], "tgt": sent["frames"][-1], "frames": sent["frames"][:3], "flow": flow}
    marked = mark_unchanged(sent, out, before)
    assert marked["src"] == (SAME, "frames", 0, 1, True)
    assert marked["tgt"] == (SAME, "frames", 3, 4, True)
    assert marked["frames"] == (SAME, "frames", 0, 3, False)
    assert marked["flow"] is flow  # made by the stage: it travels
    orig = _pair(frames=fr, still=np.ones((24, 32), bool), other=np.zeros(3))
    back = merge_back(orig, _pair(**marked), ("frames", "still"))
    assert set(back.arrays) == {"src", "tgt", "frames", "flow", "other"}  # "still" was read and dropped
    assert np.array_equal(back.arrays["src"], fr[0]) and np.array_equal(back.arrays["tgt"], fr[3])
    assert back.arrays["frames"].shape == (3, 24, 32, 3) and np.array_equal(back.arrays["frames"], fr[:3])
    assert back.arrays["flow"] is flow and back.arrays["other"] is orig.arrays["other"]


def test_an_array_changed_in_place_travels_back():
    fr = _frames()
    sent = {"frames": fr.copy()}
    sent["frames"][1, 5, 5] = 0 if fr[1, 5, 5, 0] else 255  # the stage wrote into what it was sent
    marked = mark_unchanged(sent, {"frames": sent["frames"], "src": sent["frames"][0]}, {"frames": fr})
    assert isinstance(marked["frames"], np.ndarray) and not np.array_equal(marked["frames"], fr)
    assert marked["src"] == (SAME, "frames", 0, 1, True)  # row 0 is unchanged
    # a different array of the same shape is not taken for the one sent
    other = fr.copy()
    assert mark_unchanged({"frames": fr}, {"x": other}, {"frames": fr})["x"] is other


def test_a_reject_from_a_model_stage_gets_its_preview_from_the_whole_pair():
    fr = _frames(h=48, w=64)
    coarse = np.full((48, 64, 3), 200, np.uint8)
    orig = _pair(src=fr[0], tgt=fr[-1], flow=np.zeros((48, 64, 2), np.float32), coarse=coarse)
    (s,) = slim([orig], ("src", "tgt"))
    from vid2pair.core.stage import reject_preview
    from vid2pair.pipeline.plan import signal_previews

    r = pair_reject(s, "collage", "collage_failed")
    narrow = r.preview = reject_preview(s, signal_previews())  # what the stage gave, in its actor
    back = merge_back(orig, r, ("src", "tgt"), signal_previews())
    assert isinstance(back, Reject) and back.reason == "collage_failed"
    assert len(back.preview) > 0 and back.preview != narrow  # three panels (with the coarse edit), not two
    import cv2

    assert cv2.imdecode(np.frombuffer(back.preview, np.uint8), cv2.IMREAD_COLOR).shape[1] == 3 * 160


def test_ray_flow_model_actor_gets_the_frames_and_sends_back_only_the_flow(demo_corpus, tmp_path, ray_local):
    """flow.backend=raft_small from a local checkpoint (torchvision's architecture, random weights):
    its actors receive the frames a pair's flow needs and nothing else; src, tgt and the frames in
    between come back as markers, only the flow fields travel. The shards equal the local runner's."""
    import torch
    from torchvision.models.optical_flow import raft_small

    torch.manual_seed(0)
    ckpt = tmp_path / "raft_small.pth"
    torch.save(raft_small(weights=None).state_dict(), ckpt)
    more = [
        "runner.progress=false",
        "flow.backend=raft_small",
        f"flow.weights={ckpt}",
        "flow.iters=2",
        "flow.device=cpu",
        "flow.num_gpus=0",
        "collage.enabled=false",
    ]
    a = build(
        load_config("demo", ["runner.name=local", *more]), str(demo_corpus[0]), tmp_path / "local", log_summary=False
    )
    b = build(load_config("demo", ["runner.name=ray", *more]), str(demo_corpus[0]), tmp_path / "ray", log_summary=False)
    io = b["model_io"]["flow"]
    print("flow actors:", io)
    assert io["arrays"] == ["frames"] and io["pairs"] >= 1
    s = json.loads((tmp_path / "ray" / "summary.json").read_text())
    assert s["model_io"] == b["model_io"]
    # back: per pair at most forward + backward flow (8 bytes a pixel each), the fb masks and the
    # still mask (1 byte a pixel each): no frame (3 bytes a pixel each, 2+ per pair)
    assert 0 < io["mib_out"] <= io["pairs"] * 240 * 320 * (8 + 8 + 3) / 2**20 + 0.01
    assert io["mib_in"] >= io["pairs"] * 2 * 240 * 320 * 3 / 2**20
    assert a["samples"] == b["samples"]
    assert _digests(tmp_path / "ray") == _digests(tmp_path / "local")
