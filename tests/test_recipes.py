"""The presets are the papers' method sections; their weight-free counterparts run anywhere."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import yaml

from vid2pair.core.errors import ConfigError
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.plan import needs, pair_classes

ROOT = Path(__file__).resolve().parent.parent
SIGNAL_SECTIONS = ("track", "sketch", "coarse", "collage", "region_drag", "quality")


@pytest.mark.parametrize("preset", ["demo", "framepainter", "magicfixup"])
def test_every_preset_names_every_signal_section_and_says_why(preset):
    text = (ROOT / "configs" / f"{preset}.yaml").read_text()
    data = yaml.safe_load(text)
    for sec in SIGNAL_SECTIONS:
        assert sec in data and "enabled" in data[sec], (preset, sec)
        line = next(ln for ln in text.splitlines()[text.splitlines().index(f"{sec}:") + 1 :] if "enabled:" in ln)
        assert "#" in line and ("ON" in line or "OFF" in line), (preset, sec, line)


def test_framepainter_is_the_paper():
    c = load_config("framepainter")
    assert c.flow.backend == "sea_raft_m" and c.track.backend == "cotracker3_offline" and c.track.enabled
    assert c.sketch.enabled and c.coarse.enabled and not c.collage.enabled and not c.region_drag.enabled
    assert c.pairs.min_gap_s == 1.0 and c.frame.size == [576, 1024]
    assert {n.name for n in needs(c) if n.what == "weights"} == {"sea_raft_m", "cotracker3_offline"}
    # the models' own output: none of the weight-free path's fixes (tests/test_paper_parity.py)
    assert not (c.flow.static_suppress or c.flow.rematch or c.flow.fb_mask)
    assert not (c.track.hold_still or c.track.follow_rematch)
    assert c.quality.enabled  # a declared addition: it judges, it never rewrites


WEIGHT_FREE_FIXES = {"flow": ("static_suppress", "rematch", "fb_mask"), "track": ("hold_still", "follow_rematch")}


@pytest.mark.parametrize("preset", ["framepainter", "magicfixup"])
def test_the_paper_presets_header_names_each_fix_they_turn_off(preset):
    text = (ROOT / "configs" / f"{preset}.yaml").read_text()
    header = "\n".join(ln for ln in text.splitlines() if ln.startswith("#"))
    for sec, knobs in WEIGHT_FREE_FIXES.items():
        if preset == "magicfixup" and sec == "track":
            continue  # no tracker in Magic Fixup
        for k in knobs:
            assert f"{sec}.{k}" in header, (preset, sec, k)


def test_magicfixup_is_the_paper_and_its_code():
    c = load_config("magicfixup")
    assert c.frame.mode == "short_side_crop" and c.frame.short_side == 512 and c.frame.size == [512, 512]
    assert (c.pairs.policy, c.pairs.uniform_min_s, c.pairs.uniform_max_s) == ("uniform_seconds", 1, 10)
    assert c.flow.backend == "raft_large" and c.flow.chain and c.flow.median_filter_px == 15
    assert (c.motion.large_px, c.motion.max_large_frac) == (350.0, 0.1)
    assert c.coarse.hole_rule == "alpha" and c.coarse.hole_thresh == 0.5 and c.coarse.min_coverage == 0.6
    assert (c.collage.segmenter, c.collage.sam_model_type, c.collage.min_area, c.collage.fit_samples) == (
        "sam",
        "vit_h",
        300,
        50,
    )
    assert c.collage.depth == "dpt" and c.collage.dpt_model == "dpt_large" and c.collage.erode_px == 1
    assert not c.track.enabled and not c.sketch.enabled
    assert [S.name for S in pair_classes(c)] == ["flow", "motion", "coarse", "collage", "quality", "encode"]
    assert {n.name for n in needs(c) if n.what == "weights"} == {"raft_large", "sam_vit_h", "dpt_large"}
    assert not (c.flow.static_suppress or c.flow.rematch or c.flow.fb_mask)


def test_cpu_counterparts_inherit_and_need_nothing():
    for paper in ("framepainter", "magicfixup"):
        c, p = load_config(f"{paper}_cpu"), load_config(paper)
        assert needs(c) == [] and c.flow.num_gpus == 0
        # only what differs is stated: the weight-free backends, and spare candidates (the quality stage runs
        # with the decoder there, so a rejected pair can be replaced)
        assert c.pairs.oversample == 4 and p.pairs.oversample == 1
        # and the weight-free sampling: candidates only where the scan sees a local change, kept apart
        assert c.pairs.prescreen and not p.pairs.prescreen and c.pairs.min_separation_s > 0
        same = dataclasses.replace(c.pairs, oversample=1, prescreen=False, min_separation_s=p.pairs.min_separation_s)
        assert c.frame == p.frame and same == p.pairs and c.motion == p.motion
        raw = yaml.safe_load((ROOT / "configs" / f"{paper}_cpu.yaml").read_text())
        assert raw["base"] == paper and len(raw) <= 6
        # the weight-free path's fixes, off in the paper preset, are on here
        assert c.flow.static_suppress and c.flow.rematch and c.flow.fb_mask
        assert paper == "magicfixup" or (c.track.hold_still and c.track.follow_rematch)
    d = load_config("demo")
    assert d.flow.static_suppress and d.flow.rematch and d.flow.fb_mask and d.track.hold_still


def test_base_inheritance_and_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b\npairs:\n  per_shot: 7\n")
    (tmp_path / "b.yaml").write_text("base: demo\nseed: 5\n")
    c = load_config(tmp_path / "a.yaml")
    assert c.pairs.per_shot == 7 and c.seed == 5 and c.frame.size == [240, 320]
    (tmp_path / "b.yaml").write_text("base: a\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_magic_fixups_hole_rule_marks_no_holes_on_a_zoom():
    """A 1.5x zoom: the density rule marks most magnified pixels as holes, Magic Fixup's alpha rule
    none inside the frame (content lands everywhere)."""
    from vid2pair.stages.coarse import coarse_edit

    h, w = 96, 128
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx, cy = (w - 1) / 2, (h - 1) / 2
    flow = np.stack([(xs - cx) * 0.5, (ys - cy) * 0.5], -1).astype(np.float32)
    _, holes_d, cov_d = coarse_edit(src, flow, "avg", hole_thresh=0.5)
    _, holes_a, cov_a = coarse_edit(src, flow, "avg", hole_thresh=0.5, hole_rule="alpha")
    assert cov_d < 0.6 and cov_a > 0.99, (cov_d, cov_a)


def test_the_median_filter_is_applied_to_the_flow():
    from vid2pair.core.items import PairItem
    from vid2pair.stages.flow import FlowStage

    cfg = load_config("demo", ["flow.median_filter_px=5", "flow.chain=false", "flow.static_suppress=false"])
    rng = np.random.default_rng(1)
    fr = rng.integers(0, 255, (2, 64, 80, 3), dtype=np.uint8)
    it = PairItem(key="k", clip_id="c", source="s", chunk=0, clip_idx=0, meta={}, arrays={"frames": fr})
    out = FlowStage(cfg)([it])[0]
    from scipy.ndimage import median_filter

    raw = FlowStage(load_config("demo", ["flow.chain=false", "flow.static_suppress=false"]))(
        [PairItem(key="k", clip_id="c", source="s", chunk=0, clip_idx=0, meta={}, arrays={"frames": fr})]
    )[0]
    want = median_filter(raw.arrays["flow"][..., 0], size=5, mode="nearest")
    np.testing.assert_allclose(out.arrays["flow"][..., 0], want, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["framepainter_cpu", "magicfixup_cpu"])
def test_the_cpu_counterparts_build(preset, tmp_path):
    from vid2pair.pipeline.runners import build
    from vid2pair.pipeline.synthetic import make_clip, write_video

    d = tmp_path / "clips"
    d.mkdir()
    write_video(make_clip(width=320, height=240, n_frames=36, fps=12, seed=3).frames, d / "a.mp4", 12, codec="mpeg4")
    s = build(
        load_config(
            preset, ["runner.name=local", "runner.progress=false", "pairs.per_shot=1", "pairs.uniform_max_s=2"]
        ),
        str(d),
        tmp_path / "out",
        log_summary=False,
    )
    assert s["all_inputs_accounted"] and s["samples"] + s["rejects_total"] >= 1
