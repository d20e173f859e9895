"""Motion rules (statistics, resolution scaling, each preset's verdicts, non-finite flow) and the
decode-time frame policies (resize = cover + centre crop, Magic Fixup's short side + crop, the
decode-size cap)."""

from types import SimpleNamespace

import numpy as np
import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.stages.decode import apply_frame_policy, decode_size
from vid2pair.stages.motion import flow_stats, motion_stats, motion_verdict


def _flow(h, w, frac_moving, mag, large_frac=0.0, large_mag=0.0):
    """(h, w, 2) flow: the first ``frac_moving`` of the rows move ``mag`` px to the right, the first
    ``large_frac`` of them ``large_mag`` px instead; the rest is still."""
    f = np.zeros((h, w, 2), np.float32)
    f[: int(round(h * frac_moving)), :, 0] = mag
    f[: int(round(h * large_frac)), :, 0] = large_mag
    return f


def test_flow_stats_on_known_flow():
    f = _flow(100, 80, 0.25, 4.0)
    f[0, 0] = (3.0, 4.0)  # one pixel of magnitude 5
    st = flow_stats(f, moving_px=1.0, large_px=4.5)
    assert st["moving_frac"] == pytest.approx(0.25) and st["large_frac"] == pytest.approx(1 / 8000)
    assert st["p50"] == 0.0 and st["p90"] == pytest.approx(4.0) and st["max"] == pytest.approx(5.0)
    assert st["mean"] == pytest.approx((1999 * 4.0 + 5.0) / 8000)


def test_thresholds_scale_with_the_stored_short_side():
    cfg = load_config("framepainter").motion  # moving_px 2 at a 512-px short side
    f = _flow(256, 456, 0.5, 1.5)  # at 256 px, 2 px scale to 1 px: 1.5 px counts as moving
    assert motion_stats(f, cfg)["moving_px"] == pytest.approx(1.0)
    assert motion_stats(f, cfg)["moving_frac"] == pytest.approx(0.5)
    big = _flow(512, 912, 0.5, 1.5)  # at 512 px the same 1.5 px do not move
    assert motion_stats(big, cfg)["moving_frac"] == 0.0
    assert motion_verdict(motion_stats(big, cfg), 512, cfg)[0] == "motion_too_small"
    assert motion_verdict(motion_stats(f, cfg), 256, cfg) is None


@pytest.mark.parametrize(
    "preset, flow, expect",
    [
        # FramePainter: too small below 2 % of pixels moving > 2 px; too large when p99 > 250 px (at 512)
        ("framepainter", _flow(512, 512, 0.015, 10.0), "motion_too_small"),
        ("framepainter", _flow(512, 512, 0.05, 10.0), None),
        ("framepainter", _flow(512, 512, 0.05, 10.0, large_frac=0.02, large_mag=300.0), "motion_too_large"),
        # Magic Fixup: too large when >= 10 % of pixels move >= 350 px; too small when p90 < 1 px
        ("magicfixup", _flow(512, 512, 0.5, 20.0, large_frac=0.11, large_mag=360.0), "motion_too_large"),
        ("magicfixup", _flow(512, 512, 0.5, 20.0, large_frac=0.08, large_mag=360.0), None),
        ("magicfixup", _flow(512, 512, 0.05, 20.0), "motion_too_small"),
    ],
)
def test_preset_rules(preset, flow, expect):
    cfg = load_config(preset).motion
    got = motion_verdict(motion_stats(flow, cfg), 512, cfg)
    assert (got[0] if got else None) == expect, got


def test_non_finite_flow_is_rejected_by_name():
    from vid2pair.core.items import PairItem, Reject
    from vid2pair.stages.motion import MotionStage

    cfg = load_config("demo")
    f = _flow(48, 64, 0.5, 3.0)
    f[3, 5, 0] = np.nan
    f[4, 6, 1] = np.inf
    it = PairItem(key="k", clip_id="c", source="s.mp4", chunk=0, clip_idx=0, meta={"flow": {}}, arrays={"flow": f})
    out = MotionStage(cfg).one(it)
    assert isinstance(out, Reject) and (out.stage, out.reason) == ("motion", "invalid_flow")
    assert out.detail.startswith("2 of 3072 pixels")
    it.arrays["flow"] = _flow(48, 64, 0.5, 3.0)
    assert MotionStage(cfg).one(it) is it and it.meta["flow"]["stats"]["moving_frac"] == pytest.approx(0.5)


def _frames(h, w):
    """(2, h, w, 3) frames whose pixel values encode their coordinates (to locate crops)."""
    ys, xs = np.mgrid[0:h, 0:w]
    img = np.stack([ys % 256, xs % 256, (ys // 256) * 16 + xs // 256], -1).astype(np.uint8)
    return np.stack([img, img])


def test_resize_covers_then_centre_crops():
    cfg = SimpleNamespace(mode="resize", size=[240, 320], short_side=None, max_decode_side=4096)
    out = apply_frame_policy(_frames(240, 640), cfg)  # 2:1 -> 4:3: scale 1, crop 160 px each side
    assert out.shape == (2, 240, 320, 3)
    assert out[0, 0, 0, 1] == 160 and out[0, 0, -1, 1] == 479 % 256 and out[0, -1, 0, 0] == 239
    up = apply_frame_policy(_frames(120, 160), cfg)  # smaller source: upscaled x2, nothing cropped
    assert up.shape == (2, 240, 320, 3)
    assert decode_size(640, 240, cfg) == (640, 240)  # decord already gives the cover size
    assert decode_size(3840, 2160, cfg) == (428, 240)  # a 4K clip decodes at 428x240, not 3840x2160


def test_magicfixup_short_side_then_centre_crop():
    cfg = load_config("magicfixup").frame
    assert (cfg.mode, cfg.short_side, list(cfg.size)) == ("short_side_crop", 512, [512, 512])
    out = apply_frame_policy(_frames(360, 640), cfg)  # short side 360 -> 512: 910x512, crop 199 px left
    assert out.shape == (2, 512, 512, 3)
    # the crop is centred: the middle column of the output shows the middle column of the input
    mid = out[0, 256, 256]
    assert abs(int(mid[1]) + 256 * (int(mid[2]) % 16) - 320) <= 1 and abs(int(mid[0]) - 180) <= 1
    assert decode_size(1920, 1080, cfg) == (912, 512)


def test_decode_size_is_capped_for_huge_frames():
    cfg = SimpleNamespace(mode="none", size=None, short_side=None, max_decode_side=1024)
    assert decode_size(7680, 4320, cfg) == (1024, 576)
    assert decode_size(640, 360, cfg) == (640, 360)  # never up
