"""stages.collage / segment / depth: piecewise-similarity collage on synthetic clips with known motion."""

from __future__ import annotations

import json
import sys
from functools import partial
from types import SimpleNamespace

import numpy as np
import pytest

from vid2pair.core.items import PairItem, Reject
from vid2pair.core.spec import validate
from vid2pair.pipeline.synthetic import ObjectSpec, make_clip
from vid2pair.stages.collage import CollageConfig, CollageStage, composite, fit_segments, make_collage
from vid2pair.stages.depth import DPT_EXTRA_MESSAGE, DPTDepth, occlusion_order, order_to_disparity
from vid2pair.stages.flow import DISFlow
from vid2pair.stages.region_drag import RegionDragConfig
from vid2pair.stages.segment import SAM_EXTRA_MESSAGE, FelzenszwalbSegmenter, SamSegmenter, SlicSegmenter, relabel


def _psnr(a, b, m):
    d = (a.astype(np.float64) - b.astype(np.float64))[m]
    return 10 * np.log10(255.0**2 / max(float((d**2).mean()), 1e-12))


def _clip(seed: int):
    """Static camera, 320x240: two translating rectangles and one rotating ellipse (known z-order)."""
    objs = [
        ObjectSpec("rect", (70, 50), (100, 100), velocity=(3, 1), texture_seed=1 + seed),
        ObjectSpec("ellipse", (60, 60), (200, 130), angular_velocity=4, texture_seed=2 + seed),
        ObjectSpec("rect", (50, 40), (150, 80), velocity=(-2, 2), texture_seed=3 + seed),
    ]
    return make_clip(width=320, height=240, n_frames=6, objects=objs, seed=seed)


def _cfg(**kw):
    return SimpleNamespace(collage=CollageConfig(**kw), region_drag=RegionDragConfig(), seed=0)


def _item(src, tgt, flow, key="clip_s000_f000000_f000005"):
    return PairItem(
        key=key,
        clip_id="clip",
        source="clip.mp4",
        chunk=0,
        clip_idx=0,
        meta={},
        arrays={"src": src, "tgt": tgt, "flow": np.asarray(flow, np.float32)},
    )


# ------------------------------------------------------------------------------ quality


@pytest.fixture(scope="module")
def pairs():
    out = []
    for seed in (0, 1, 2):
        c = _clip(seed)
        for gap, flows in ((2, ("gt", "dis")), (5, ("gt",))):
            src, tgt = c.frames[0], c.frames[gap]
            gt, _ = c.flow(0, gap)
            for name in flows:
                fl = gt if name == "gt" else DISFlow("medium")(src, tgt)
                out.append((seed, gap, name, c, src, tgt, fl))
    return out


def test_collage_psnr_beats_source(pairs):
    """PSNR(collage, tgt) outside the holes vs PSNR(src, tgt) on the same pixels.

    Measured (defaults, seeds 0-2): GT flow, gap 2: +8.5..+10.5 dB, gap 5: +6.1..+11.3 dB;
    DIS flow, gap 2 (object EPE ~0.9 px): +7.0..+8.0 dB (the plain coarse edit: +7.0..+8.4).
    At gap 5 DIS itself fails on these textures (object EPE 7-12 px; collage +1.3..+3.0,
    coarse edit +1.5..+3.3), so no DIS bound is set there. Bounds: >= 5 dB per pair, mean
    >= 8 dB (GT) / 6.5 dB (DIS); the coarse edit's bar is 6 dB.
    """
    gains = {}
    for seed, gap, name, _c, src, tgt, fl in pairs:
        cfg = CollageConfig()
        lab = FelzenszwalbSegmenter(flow_weight=cfg.flow_weight, min_area=cfg.min_area)(src, fl)
        res = make_collage(src, tgt, fl, lab, cfg=cfg, moving_px=1.0, rng=np.random.default_rng(seed))
        keep = res["mask"] == 0
        assert keep.mean() > 0.95  # holes: disocclusions only
        gain = _psnr(res["collage"], tgt, keep) - _psnr(src, tgt, keep)
        gains.setdefault(name, []).append(gain)
        assert gain >= 5.0, (seed, gap, name, gain)
    for name, g in gains.items():
        assert np.mean(g) >= {"gt": 8.0, "dis": 6.5}[name], (name, g)


def test_occlusion_order_matches_synthetic_z_order(pairs):
    """Where warped segments compete for a target pixel, the winner must be the object the
    target shows there. Measured with GT flow (seeds 0-5, gaps 2 and 5): 0.89-0.98 of the
    contested pixels correct; the reversed order gets 0.004-0.09."""
    for seed, gap, name, c, src, tgt, fl in pairs:
        if name != "gt":
            continue
        lab = FelzenszwalbSegmenter()(src, fl)
        res = make_collage(src, tgt, fl, lab, cfg=CollageConfig(), moving_px=1.0)
        g0, gt_t = c.object_masks(0), c.object_masks(gap)
        maj = np.array([np.bincount(g0[lab == k], minlength=8).argmax() for k in range(len(res["fits"]))])
        _, _, rev, _ = composite(src, tgt, fl, lab, res["fits"], res["order"][::-1])
        own = res["owner"]
        cont = (own != rev) & (own >= 0) & (rev >= 0)
        assert cont.sum() > 100
        right = (maj[own[cont]] == gt_t[cont]).mean()
        wrong = (maj[rev[cont]] == gt_t[cont]).mean()
        assert right >= 0.85 and wrong <= 0.25, (seed, gap, right, wrong)
        assert res["meta"]["depth"]["constraints"] >= 2


def test_segments_follow_motion_boundaries(pairs):
    """Felzenszwalb on image + flow: segments do not straddle objects (purity vs GT masks)."""
    for _seed, _gap, name, c, src, _tgt, fl in pairs[:2]:
        lab = FelzenszwalbSegmenter()(src, fl)
        g0 = c.object_masks(0)
        assert lab.shape == g0.shape and lab.dtype == np.int32
        ids = np.unique(lab[lab >= 0])
        np.testing.assert_array_equal(ids, np.arange(len(ids)))
        assert all((lab == k).sum() > 300 for k in ids)
        pure = sum(np.bincount(g0[lab == k]).max() for k in ids) / (lab >= 0).sum()
        assert pure > (0.999 if name == "gt" else 0.98), (name, pure)  # measured: >= 0.9999 / 0.994-0.998


def test_segmenters_scale_with_resolution():
    """Parameters are per 240-px short side: a 2x frame gives about as many segments."""
    c1 = make_clip(width=160, height=120, n_frames=1, n_objects=2, seed=4)
    c2 = make_clip(width=320, height=240, n_frames=1, n_objects=2, seed=4)
    for seg in (FelzenszwalbSegmenter(min_area=30), SlicSegmenter(min_area=30)):
        n1 = len(np.unique(seg(c1.frames[0])))
        n2 = len(np.unique(seg(c2.frames[0])))
        assert 0.4 < n1 / n2 < 2.5, (seg.name, n1, n2)


def test_relabel():
    lab = np.array([[5, 5, 7, -1], [5, 9, 9, 9]])
    np.testing.assert_array_equal(relabel(lab, 1), [[0, 0, -1, -1], [0, 1, 1, 1]])


# ------------------------------------------------------------------------------ fallbacks


def test_degenerate_segments_fall_back_to_splatting():
    c = _clip(0)
    src, tgt = c.frames[0], c.frames[2]
    flow, _ = c.flow(0, 2)
    h, w = flow.shape[:2]
    lab = np.full((h, w), -1, np.int32)
    lab[:, : w // 2] = 0  # a big segment: fitted
    lab[10:20, w // 2 + 10 : w // 2 + 20] = 1  # 100 px: too small
    lab[100:130, w // 2 + 20 : w // 2 + 60] = 2  # 1200 px of pure noise flow: no similarity
    lab[30:230, w - 12 : w - 10] = 3  # a 400-px line with NaN flow: no fit at all
    fl = flow.copy()
    rng = np.random.default_rng(0)
    fl[lab == 2] = rng.uniform(-40, 40, size=((lab == 2).sum(), 2))
    fl[lab == 3] = np.nan
    fits = fit_segments(lab, fl, min_area=300, rng=rng)
    st = [f.status for f in fits]
    assert st[0] == "ok" and st[1] == "too_small" and st[2] in ("few_inliers", "degenerate") and st[3] == "fit_failed"
    assert all(f.transform is None for f in fits[1:])
    res = make_collage(src, tgt, fl, lab, cfg=CollageConfig(), moving_px=1.0)  # NaN flow: not splatted
    meta = res["meta"]
    assert meta["leftover_src_px"] == (lab != 0).sum() and meta["splat_px"] > 0
    json.dumps(meta)
    # the unsegmented right half is splatted along the flow: it matches the target (GT flow)
    right = (res["mask"] == 0) & (lab < 0) & (c.object_masks(2) == 0)
    right[:, : w // 2 + 4] = False
    assert _psnr(res["collage"], tgt, right) > 35


def test_stage_never_crashes_on_bad_pairs():
    c = _clip(1)
    src, tgt = c.frames[0], c.frames[2]
    flow, _ = c.flow(0, 2)
    st = CollageStage(_cfg())
    flat = np.full_like(src, 128)  # textureless: one segment, zero flow
    nan_flow = flow.copy()
    nan_flow[:5] = np.nan
    items = [
        _item(flat, flat, np.zeros_like(flow), "a"),
        _item(src, tgt, nan_flow, "b"),
        _item(src[:, :100], tgt, flow, "c"),
        _item(src[:8, :8], tgt[:8, :8], flow[:8, :8], "d"),
    ]
    out = st(items)
    assert isinstance(out[0], PairItem) and out[0].meta["collage"]["hole_frac"] == 0.0
    assert out[0].meta["region_drag"]["regions"] == []
    assert isinstance(out[1], Reject) and out[1].reason == "invalid_flow" and out[1].stage == "collage"
    assert isinstance(out[2], Reject) and out[2].reason == "bad_input"
    assert isinstance(out[3], PairItem)  # tiny frame: everything is one small segment -> splatted
    assert out[3].arrays["collage"].shape == (8, 8, 3)


# ------------------------------------------------------------------------------ the stage


def test_stage_outputs_and_meta():
    c = _clip(2)
    src, tgt = c.frames[0], c.frames[3]
    flow, _ = c.flow(0, 3)
    cfg = _cfg()
    validate(cfg.collage, "collage.")
    validate(cfg.region_drag, "region_drag.")
    it = CollageStage(cfg)([_item(src, tgt, flow)])[0]
    assert isinstance(it, PairItem), it
    a = it.arrays
    assert a["collage"].shape == src.shape and a["collage"].dtype == np.uint8
    assert a["collage_mask"].shape == src.shape[:2] and a["collage_mask"].dtype == np.uint8
    assert set(np.unique(a["collage_mask"])) <= {0, 255}
    assert (a["collage"][a["collage_mask"] > 0] == 0).all()
    assert a["region_masks"].shape == src.shape[:2] and a["region_masks"].dtype == np.uint8
    m = it.meta["collage"]
    json.dumps(it.meta)
    assert m["n_segments"] == len(m["segments"]) >= 3
    s0 = m["segments"][0]
    assert set(s0) >= {"id", "area", "transform", "depth", "residual_px", "inliers"}
    assert np.array(s0["transform"]).shape == (2, 3)
    assert 0 <= m["hole_frac"] < 0.05
    assert m["hole_frac"] == pytest.approx((a["collage_mask"] > 0).mean(), abs=1e-5)
    rd = it.meta["region_drag"]
    assert rd["image_size"] == [320, 240] and len(rd["regions"]) == 3
    # deterministic per pair key: a rerun writes the same sample
    it2 = CollageStage(cfg)([_item(src, tgt, flow)])[0]
    for k in ("collage", "collage_mask", "region_masks"):
        np.testing.assert_array_equal(it2.arrays[k], a[k])
    assert json.dumps(it2.meta, sort_keys=True) == json.dumps(it.meta, sort_keys=True)


def test_config_validate():
    from vid2pair.pipeline.config import ConfigError

    validate(CollageConfig(), "collage.")
    for kw, key in (
        (dict(segmenter="grabcut"), "collage.segmenter"),
        (dict(depth="zoe"), "collage.depth"),
        (dict(fit_samples=2), "collage.fit_samples"),
        (dict(ransac_thresh=0), "collage.ransac_thresh"),
        (dict(sam_model_type="vit_x"), "collage.sam_model_type"),
        (dict(num_gpus=-1), "collage.num_gpus"),
    ):
        with pytest.raises(ConfigError, match=key):
            validate(CollageConfig(**kw), "collage.")
    with pytest.raises(ConfigError, match="region_drag.max_regions"):
        validate(RegionDragConfig(max_regions=300), "region_drag.")


# ------------------------------------------------------------------------------ weights / extras


def test_missing_weights_are_reported(tmp_path, monkeypatch):
    from vid2pair.pipeline.models import MissingWeightsError

    monkeypatch.setenv("VID2PAIR_CACHE", str(tmp_path))
    with pytest.raises(MissingWeightsError, match="vid2pair models fetch sam_vit_b"):
        SamSegmenter("vit_b")
    with pytest.raises(MissingWeightsError, match="collage.sam_checkpoint"):
        SamSegmenter("vit_l", checkpoint=str(tmp_path / "nope.pth"))
    with pytest.raises(MissingWeightsError, match="vid2pair models fetch dpt_hybrid_midas"):
        DPTDepth()
    # in the stage: every pair is rejected with the reason, nothing raises
    c = _clip(0)
    flow, _ = c.flow(0, 1)
    for kw in (dict(segmenter="sam"), dict(depth="dpt")):
        out = CollageStage(_cfg(**kw))([_item(c.frames[0], c.frames[1], flow)])
        assert isinstance(out[0], Reject) and out[0].reason == "collage_backend_unavailable"
        assert "vid2pair models fetch" in out[0].detail


def test_missing_extras_name_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "segment_anything", None)
    with pytest.raises(ImportError) as e:
        SamSegmenter("vit_b")
    assert str(e.value) == SAM_EXTRA_MESSAGE and "vid2pair[collage]" in str(e.value)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"vid2pair\[collage\]") as e:
        DPTDepth()
    assert str(e.value) == DPT_EXTRA_MESSAGE


def _tiny_sam():
    """A few-layer SAM (128-px encoder) with random weights: the adapter's plumbing, fast."""
    import torch
    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    torch.manual_seed(0)
    img, emb, out = 128, 32, 32
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=2,
            embed_dim=emb,
            img_size=img,
            mlp_ratio=2,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6),
            num_heads=2,
            patch_size=16,
            qkv_bias=True,
            use_rel_pos=True,
            global_attn_indexes=(1,),
            window_size=4,
            out_chans=out,
        ),
        prompt_encoder=PromptEncoder(
            embed_dim=out, image_embedding_size=(img // 16, img // 16), input_image_size=(img, img), mask_in_chans=8
        ),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=1, embedding_dim=out, mlp_dim=64, num_heads=2),
            transformer_dim=out,
            iou_head_depth=2,
            iou_head_hidden_dim=32,
        ),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def _tiny_dpt():
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    torch.manual_seed(0)
    cfg = DPTConfig(
        hidden_size=32,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=64,
        patch_size=16,
        neck_hidden_sizes=[16, 32, 64, 128],
        fusion_hidden_size=32,
        backbone_out_indices=[0, 1, 2, 3],
    )
    return DPTForDepthEstimation(cfg), DPTImageProcessor(size={"height": 64, "width": 64})


def test_sam_and_dpt_adapters_in_the_stage():
    """Injected random-weight models: label map / disparity shapes and the stage plumbing."""
    c = make_clip(width=96, height=64, n_frames=3, n_objects=1, seed=3)
    src, tgt = c.frames[0], c.frames[2]
    flow, _ = c.flow(0, 2)
    sam = SamSegmenter(
        "vit_b",
        model=_tiny_sam(),
        points_per_side=4,
        min_area=20,
        device="cpu",
        pred_iou_thresh=0.0,
        stability_score_thresh=0.0,
    )
    lab = sam(src)
    assert lab.shape == (64, 96) and lab.dtype == np.int32 and lab.max() >= 0
    model, proc = _tiny_dpt()
    dpt = DPTDepth(model=model, processor=proc, device="cpu")
    d = dpt(src)
    assert d.shape == (64, 96) and d.dtype == np.float32 and (d >= 0).all()
    cfg = _cfg(segmenter="sam", depth="dpt", points_per_side=4, min_area=20, device="cpu")
    st = CollageStage(cfg, sam_model=_tiny_sam(), dpt_model=model, dpt_processor=proc)
    it = st([_item(src, tgt, flow)])[0]
    assert isinstance(it, PairItem), it
    assert it.arrays["collage"].shape == src.shape
    assert it.meta["collage"]["depth"]["backend"] == "dpt"
    assert it.meta["collage"]["segmenter"].startswith("segment-anything/sam_vit_b-injected")


@pytest.mark.slow
def test_sam_vit_b_registry_random_weights():
    """The real vit_b architecture from segment-anything's registry (random weights, ~20-40 s on CPU)."""
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    model = sam_model_registry["vit_b"](checkpoint=None)
    seg = SamSegmenter("vit_b", model=model, points_per_side=4, min_area=4, device="cpu")
    img = make_clip(width=48, height=32, n_frames=1, n_objects=1, seed=0).frames[0]
    lab = seg(img)
    assert lab.shape == (32, 48) and lab.dtype == np.int32 and lab.min() >= -1


def test_order_helpers():
    assert list(order_to_disparity([2, 0, 1], 3)) == pytest.approx([2 / 3, 1.0, 1 / 3])
    lab = np.zeros((20, 20), np.int32)
    lab[10:, :] = 1
    eye = np.array([[1.0, 0, 0], [0, 1, 0]])
    # no overlap: prior only (moving in front of static, lower bottom edge nearer)
    order, info = occlusion_order(
        np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 3), np.uint8), lab, [eye, eye], [True, False]
    )
    assert order == [1, 0] and info["constraints"] == 0
    order, _ = occlusion_order(
        np.zeros((20, 20, 3), np.uint8), np.zeros((20, 20, 3), np.uint8), lab, [eye, eye], [False, False]
    )
    assert order == [0, 1]


def test_fits_skip_flow_the_forward_backward_check_marks_occluded():
    """A 40x40 segment moves by (5, 3); the flow on 70 % of it is garbage (what an occluder hid) and
    the fb mask says so. Fitted on every pixel, RANSAC finds too few inliers; fitted on the
    consistent pixels, it recovers the move to within 0.1 px."""
    rng = np.random.default_rng(0)
    labels = np.zeros((60, 60), np.int32)
    labels[10:50, 10:50] = 1
    flow = np.zeros((60, 60, 2), np.float32)
    flow[10:50, 10:50] = (5.0, 3.0)
    bad = (rng.random((60, 60)) < 0.7) & (labels == 1)
    flow[bad] = rng.uniform(-30, 30, (int(bad.sum()), 2))
    plain = fit_segments(labels, flow, min_inlier_frac=0.4, rng=np.random.default_rng(1))[1]
    masked = fit_segments(labels, flow, min_inlier_frac=0.4, rng=np.random.default_rng(1), valid=~bad)[1]
    assert plain.transform is None and plain.status == "few_inliers"
    assert masked.transform is not None and masked.inliers == masked.samples
    assert np.allclose(masked.transform[:, 2], (5.0, 3.0), atol=0.1)
    assert np.allclose(masked.transform[:, :2], np.eye(2), atol=0.01)
    # too little of the segment left consistent (< a fifth): every pixel is used, as without a mask
    few = ~bad & (rng.random((60, 60)) < 0.2)
    assert (
        fit_segments(labels, flow, min_inlier_frac=0.4, rng=np.random.default_rng(1), valid=few)[1].status
        == "few_inliers"
    )


def test_a_piece_that_draws_what_changed_wrong_becomes_a_hole():
    """Two pasted pieces on a changed area: one shows the target, one (left where it was) shows
    something else. The second becomes a hole, in the collage and its mask; the first stays, and so
    does the part the splat drew (owner -1). ``collage_owner`` is dropped."""
    from vid2pair.stages.collage import hole_wrong_pieces
    from vid2pair.stages.quality import QualityConfig

    h, w = 60, 80
    tgt = np.full((h, w, 3), 200, np.uint8)
    tgt[10:30, 10:30] = 40  # what the target shows where things changed
    tgt[10:30, 40:60] = 90
    col = tgt.copy()
    col[10:30, 40:60] = 160  # piece 1 draws something else there
    own = np.full((h, w), -1, np.int32)
    own[10:30, 10:30] = 0
    own[10:30, 40:60] = 1
    C = np.zeros((h, w), bool)
    C[10:30, 10:30] = C[10:30, 40:60] = True
    arrays = {"collage": col, "collage_mask": np.zeros((h, w), np.uint8), "collage_owner": own}
    it = SimpleNamespace(arrays=arrays)
    own[40:50, 40:60] = 1  # piece 1 also spans still background, which stays drawn
    p = SimpleNamespace(c=QualityConfig(), C=C, R=C, tgt=tgt, sigma=0.7)
    assert hole_wrong_pieces(p, it) == 1
    assert "collage_owner" not in arrays
    assert (arrays["collage_mask"][10:30, 40:60] == 255).all() and (arrays["collage"][10:30, 40:60] == 0).all()
    assert not arrays["collage_mask"][10:30, 10:30].any() and (arrays["collage"][10:30, 10:30] == 40).all()
    assert not arrays["collage_mask"][40:50].any() and (arrays["collage"][40:50] == 200).all()
    arrays["collage_owner"] = own  # the rule off: nothing goes
    off = SimpleNamespace(c=QualityConfig(collage_piece_max_wrong=None), C=C, R=C, tgt=tgt, sigma=0.7)
    assert hole_wrong_pieces(off, it) is None
    assert (arrays["collage"][10:30, 40:60] == 0).all()  # (the first call's holes stay as they were)
