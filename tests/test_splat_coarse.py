"""Softmax splatting (stages/splat.py) and the Magic Fixup coarse edit (stages/coarse.py)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from vid2pair.core.items import ClipDone, PairItem, Reject
from vid2pair.core.spec import validate
from vid2pair.stages.coarse import CoarseConfig, CoarseStage, coarse_edit, coarse_edit_batch
from vid2pair.stages.splat import (
    MODES,
    backwarp,
    magicfixup_metric,
    reference_splat_numpy,
    softmax_splat,
    splat_with_density,
)


def _t(a):
    return torch.from_numpy(np.ascontiguousarray(a))


def _psnr(a, b, mask=None):
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[mask]
    return 10 * np.log10(255.0**2 / d.mean())


def _item(src, tgt, flow, key="k", **extra):
    arrays = {"src": src, "tgt": tgt, "flow": flow, **extra}
    return PairItem(key=key, clip_id="c", source="s.mp4", chunk=0, clip_idx=0, meta={}, arrays=arrays)


def _stage(**kw):
    return CoarseStage(SimpleNamespace(coarse=CoarseConfig(**kw)))


# ------------------------------------------------------------------------------ splatting


@pytest.mark.parametrize("mode", MODES)
def test_splat_matches_per_pixel_reference(mode):
    rng = np.random.default_rng(3)
    b, c, h, w = 2, 3, 11, 14
    img = rng.random((b, c, h, w)).astype(np.float32)
    flow = (rng.standard_normal((b, 2, h, w)) * 3).astype(np.float32)
    flow[0, :, 2, 3] = 40.0  # off-frame
    flow[1, 0, 5, 5] = np.nan  # dropped
    metric = (rng.standard_normal((b, 1, h, w)) * 5).astype(np.float32)
    if mode == "linear":
        metric = np.abs(metric) + 0.1
    metric[1, 0, 7, 2] = np.inf  # dropped
    ours = softmax_splat(_t(img), _t(flow), _t(metric), mode).numpy()
    ref = reference_splat_numpy(img, flow, metric, mode)
    assert ours.shape == (b, c, h, w)
    np.testing.assert_allclose(ours, ref, atol=1e-5, rtol=0)
    # the density of splat_with_density is the sum-splat of ones
    _, dens = splat_with_density(_t(img), _t(flow), _t(metric), mode)
    ones_ref = reference_splat_numpy(np.ones((b, 1, h, w)), flow, metric, "sum")
    np.testing.assert_allclose(dens.numpy(), ones_ref, atol=1e-5, rtol=0)


def test_soft_mode_is_stable_for_huge_metrics():
    rng = np.random.default_rng(0)
    img = rng.random((1, 3, 9, 10)).astype(np.float32)
    flow = (rng.standard_normal((1, 2, 9, 10)) * 2).astype(np.float32)
    z = (rng.standard_normal((1, 1, 9, 10)) * 5).astype(np.float32)
    a = softmax_splat(_t(img), _t(flow), _t(z), "soft")
    b = softmax_splat(_t(img), _t(flow), _t(z + 300.0), "soft")  # exp would overflow without the shift
    c = softmax_splat(_t(img), _t(flow), _t(z - 300.0), "soft")  # ... or underflow
    assert torch.isfinite(b).all() and torch.isfinite(c).all()
    # float32 carries z + 300 to ~3e-5, so the weights agree to ~1e-4 relative
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    torch.testing.assert_close(a, c, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", MODES)
def test_integer_translation_is_exact(mode):
    rng = np.random.default_rng(1)
    h, w, dx, dy = 40, 50, 3, -2
    img = rng.random((1, 3, h, w)).astype(np.float32)
    flow = np.zeros((1, 2, h, w), np.float32)
    flow[:, 0], flow[:, 1] = dx, dy
    z = np.ones((1, 1, h, w), np.float32)
    out, dens = splat_with_density(_t(img), _t(flow), _t(z), mode)
    out, dens = out.numpy()[0], dens.numpy()[0, 0]
    expect = np.zeros_like(img[0])
    expect[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = img[
        0, :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    np.testing.assert_array_equal(out, expect)
    landed = np.zeros((h, w), bool)
    landed[max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = True
    np.testing.assert_array_equal(dens, landed.astype(np.float32))


@pytest.mark.parametrize("mode", ["avg", "soft", "linear"])
def test_fractional_translation_matches_the_shifted_image(mode):
    h, w = 48, 64
    t = (2.37, -1.61)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    flow = np.zeros((1, 2, h, w), np.float32)
    flow[:, 0], flow[:, 1] = t
    z = np.ones((1, 1, h, w), np.float32)
    inner = (slice(4, h - 4), slice(4, w - 4))

    def shifted(f):  # the analytically shifted image: out(p) = I(p - t)
        return f(xs - t[0], ys - t[1])

    # a linear ramp: bilinear splatting of a translation reproduces it exactly
    ramp = lambda x, y: 0.01 * x + 0.02 * y + 0.1  # noqa: E731
    out = softmax_splat(_t(ramp(xs, ys)[None, None].astype(np.float32)), _t(flow), _t(z), mode).numpy()[0, 0]
    np.testing.assert_allclose(out[inner], shifted(ramp)[inner], atol=2e-5)
    # a smooth image (period >= 24 px): within the bilinear interpolation error h^2/8 |I''|
    smooth = lambda x, y: 0.5 + 0.25 * np.sin(2 * np.pi * x / 32) * np.cos(2 * np.pi * y / 24)  # noqa: E731
    out = softmax_splat(_t(smooth(xs, ys)[None, None].astype(np.float32)), _t(flow), _t(z), mode).numpy()[0, 0]
    err = np.abs(out[inner] - shifted(smooth)[inner]).max()
    bound = 0.25 * ((2 * np.pi / 24) ** 2 + (2 * np.pi / 32) ** 2) / 8 * 2  # generous h^2/8 |I''| bound
    assert err < bound, (err, bound)


def test_splat_drops_off_frame_and_non_finite_and_handles_empty():
    img = torch.ones(1, 1, 6, 7)
    flow = torch.full((1, 2, 6, 7), 100.0)
    assert softmax_splat(img, flow, None, "avg").abs().max() == 0
    flow = torch.full((1, 2, 6, 7), float("nan"))
    assert softmax_splat(img, flow, torch.zeros(1, 1, 6, 7), "soft").abs().max() == 0
    assert softmax_splat(torch.ones(0, 3, 4, 4), torch.zeros(0, 2, 4, 4), None, "sum").shape == (0, 3, 4, 4)
    assert softmax_splat(torch.ones(1, 3, 0, 4), torch.zeros(1, 2, 0, 4), None, "avg").shape == (1, 3, 0, 4)
    with pytest.raises(ValueError):
        softmax_splat(img, torch.zeros(1, 2, 6, 7), None, "soft")  # soft needs a metric
    with pytest.raises(ValueError):
        softmax_splat(img, torch.zeros(1, 2, 6, 7), None, "bogus")


def test_softmax_keeps_the_visible_surface_where_pixels_collide():
    # two 1x1 sources collide on one target pixel: the one with the larger metric wins in soft mode
    img = torch.tensor([[[[0.0, 1.0]]]])  # (1, 1, 1, 2)
    flow = torch.tensor([[[[1.0, 0.0]], [[0.0, 0.0]]]])  # pixel 0 moves onto pixel 1
    z = torch.tensor([[[[0.0, -10.0]]]])
    soft = softmax_splat(img, flow, z, "soft")[0, 0, 0, 1].item()
    avg = softmax_splat(img, flow, None, "avg")[0, 0, 0, 1].item()
    assert soft == pytest.approx(1.0 / (1.0 + np.exp(10.0)), abs=1e-6)  # ~ value of pixel 0 (= 0.0)
    assert avg == pytest.approx(0.5)


def test_backwarp_and_magicfixup_metric():
    rng = np.random.default_rng(2)
    h, w = 30, 40
    tgt = rng.random((1, 3, h, w)).astype(np.float32)
    src = np.zeros_like(tgt)
    src[..., :, : w - 4] = tgt[..., :, 4:]  # src(x) = tgt(x + 4): flow src -> tgt is +4
    flow = np.zeros((1, 2, h, w), np.float32)
    flow[:, 0] = 4.0
    bw = backwarp(_t(tgt), _t(flow)).numpy()
    np.testing.assert_allclose(bw[..., : w - 4], src[..., : w - 4], atol=1e-5)
    m = magicfixup_metric(_t(src), _t(tgt), _t(flow)).numpy()
    assert np.abs(m[..., : w - 4]).max() < 1e-3  # matched: ~0
    wrong = magicfixup_metric(_t(src), _t(tgt), _t(np.zeros_like(flow))).numpy()
    assert wrong.mean() < -3 and wrong.min() >= -20 and wrong.max() <= 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    rng = np.random.default_rng(4)
    img = _t(rng.random((3, 3, 64, 80)).astype(np.float32))
    flow = _t((rng.standard_normal((3, 2, 64, 80)) * 4).astype(np.float32))
    z = _t((rng.standard_normal((3, 1, 64, 80)) * 5).astype(np.float32))
    for mode in MODES:
        zz = z.abs() + 0.1 if mode == "linear" else z
        cpu = softmax_splat(img, flow, zz, mode)
        gpu = softmax_splat(img.cuda(), flow.cuda(), zz.cuda(), mode).cpu()
        torch.testing.assert_close(cpu, gpu, atol=1e-4, rtol=1e-4)


def test_speed_torch_vs_reference(capsys):
    """Reports ms per megapixel (soft mode): torch on CPU vs the numpy per-pixel loop."""
    rng = np.random.default_rng(5)
    h, w = 120, 160
    img = rng.random((1, 3, h, w)).astype(np.float32)
    flow = (rng.standard_normal((1, 2, h, w)) * 2 + 3).astype(np.float32)
    z = rng.standard_normal((1, 1, h, w)).astype(np.float32)
    t0 = time.perf_counter()
    reference_splat_numpy(img, flow, z, "soft")
    ref_ms = (time.perf_counter() - t0) * 1e3 / (h * w / 1e6)
    big = 512
    bi = _t(rng.random((1, 3, big, big)).astype(np.float32))
    bf = _t((rng.standard_normal((1, 2, big, big)) * 2 + 3).astype(np.float32))
    bz = _t(rng.standard_normal((1, 1, big, big)).astype(np.float32))
    softmax_splat(bi, bf, bz, "soft")
    best = float("inf")
    for _ in range(3):  # best of 3: the CI machine is shared
        t0 = time.perf_counter()
        softmax_splat(bi, bf, bz, "soft")
        best = min(best, time.perf_counter() - t0)
    ours_ms = best * 1e3 / (big * big / 1e6)
    with capsys.disabled():
        print(
            f"\nsplat soft, CPU ({torch.get_num_threads()} threads): torch {ours_ms:.0f} ms/MP, "
            f"numpy reference loop {ref_ms:.0f} ms/MP"
        )
    assert ours_ms < ref_ms


# ------------------------------------------------------------------------------ coarse edit


def test_coarse_edit_psnr_gain_with_ground_truth_flow(capsys):
    from vid2pair.pipeline.synthetic import make_clip

    lines = []
    for seed in range(4):
        clip = make_clip(width=160, height=120, n_frames=12, n_objects=2, seed=seed)
        src, tgt = clip.frames[0], clip.frames[8]
        flow, _ = clip.flow(0, 8)
        coarse, holes, cov = coarse_edit(src, flow, "soft", tgt=tgt)
        keep = holes == 0
        assert coarse.dtype == np.uint8 and coarse.shape == src.shape and holes.shape == src.shape[:2]
        assert (coarse[~keep] == 0).all() and set(np.unique(holes)) <= {0, 255}
        assert cov == pytest.approx(keep.mean())
        p_coarse, p_base = _psnr(coarse, tgt, keep), _psnr(src, tgt, keep)
        lines.append(
            f"seed {seed}: coarse {p_coarse:.1f} dB vs src {p_base:.1f} dB (+{p_coarse - p_base:.1f}), "
            f"coverage {cov:.3f}"
        )
        assert p_coarse >= p_base + 6.0, lines[-1]
    with capsys.disabled():
        print("\ncoarse edit, GT flow, 160x120, 8 frames apart:\n  " + "\n  ".join(lines))


def test_coarse_edit_psnr_gain_with_dis_flow(capsys):
    from vid2pair.pipeline.synthetic import make_clip
    from vid2pair.stages.flow import DISFlow

    dis = DISFlow("medium")
    lines = []
    for seed in range(3):
        clip = make_clip(width=320, height=240, n_frames=8, n_objects=2, seed=seed)
        src, tgt = clip.frames[0], clip.frames[4]
        flow = dis(src, tgt)
        coarse, holes, cov = coarse_edit(src, flow, "soft", tgt=tgt)
        keep = holes == 0
        p_coarse, p_base = _psnr(coarse, tgt, keep), _psnr(src, tgt, keep)
        lines.append(
            f"seed {seed}: coarse {p_coarse:.1f} dB vs src {p_base:.1f} dB (+{p_coarse - p_base:.1f}), "
            f"coverage {cov:.3f}"
        )
        assert p_coarse >= p_base + 6.0, lines[-1]
    with capsys.disabled():
        print("\ncoarse edit, DIS flow, 320x240, 4 frames apart:\n  " + "\n  ".join(lines))


def test_coarse_modes_and_batch_agree_with_single():
    from vid2pair.pipeline.synthetic import make_clip

    clip = make_clip(width=96, height=64, n_frames=6, n_objects=2, seed=1)
    src, tgt = clip.frames[[0, 1]], clip.frames[[4, 5]]
    flow = np.stack([clip.flow(0, 4)[0], clip.flow(1, 5)[0]])
    for mode in MODES:
        img, holes, cov = coarse_edit_batch(src, flow, mode, tgt=tgt)
        for k in range(2):
            i1, h1, c1 = coarse_edit(src[k], flow[k], mode, tgt=tgt[k])
            np.testing.assert_array_equal(img[k], i1)
            np.testing.assert_array_equal(holes[k], h1)
            assert cov[k] == pytest.approx(c1)
    with pytest.raises(ValueError):
        coarse_edit(src[0], flow[0], "soft")  # soft needs tgt for the metric


# ------------------------------------------------------------------------------ stage


def test_coarse_stage_adds_arrays_and_meta_and_keeps_order():
    from vid2pair.pipeline.synthetic import make_clip

    clips = [
        make_clip(width=w, height=h, n_frames=6, n_objects=1, seed=s)
        for (w, h, s) in [(96, 64, 0), (80, 48, 1), (96, 64, 2)]
    ]
    items = [_item(c.frames[0], c.frames[3], c.flow(0, 3)[0], key=f"k{i}") for i, c in enumerate(clips)]
    done = ClipDone(source="s.mp4", clip_id="c", chunk=0, clip_idx=0, n_items=3)
    rej = Reject(source="s.mp4", clip_id="c", chunk=0, clip_idx=0, stage="x", reason="y")
    out = _stage(batch_size=2)([items[0], rej, items[1], items[2], done])
    assert out[1] is rej and out[4] is done
    for it, c in zip([out[0], out[2], out[3]], clips):
        assert isinstance(it, PairItem)
        assert it.arrays["coarse"].shape == c.frames[0].shape and it.arrays["coarse"].dtype == np.uint8
        assert it.arrays["coarse_mask"].shape == c.frames[0].shape[:2]
        m = it.meta["coarse"]
        assert m["mode"] == "soft" and m["coverage"] + m["hole_frac"] == pytest.approx(1.0)
        single, holes, cov = coarse_edit(it.arrays["src"], it.arrays["flow"], "soft", tgt=it.arrays["tgt"])
        np.testing.assert_array_equal(it.arrays["coarse"], single)
        assert m["coverage"] == pytest.approx(cov, abs=1e-5)


def test_low_coverage_is_rejected_and_recorded():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    off = np.full((48, 64, 2), 80.0, np.float32)  # everything leaves the frame
    img, holes, cov = coarse_edit(src, off, "soft", tgt=src)
    assert cov == 0.0 and (holes == 255).all()
    # the pair goes on without its coarse edit (its other signals may be fine): a signal-level record
    (r,) = _stage()([_item(src, src, off)])
    assert isinstance(r, PairItem) and "coarse" not in r.arrays and "coarse_mask" not in r.arrays
    (rec,) = r.meta["signal_rejects"]
    assert (rec["stage"], rec["signal"], rec["reason"]) == ("coarse", "coarse", "low_coverage")
    assert "coverage 0.000 < 0.6" in rec["detail"]
    half = np.zeros((48, 64, 2), np.float32)
    half[..., 0] = 40.0  # 24 of 64 columns stay: coverage 0.375
    (r,) = _stage()([_item(src, src, half)])
    assert r.meta["signal_rejects"][0]["reason"] == "low_coverage"
    (ok,) = _stage(min_coverage=None)([_item(src, src, half)])
    assert isinstance(ok, PairItem) and ok.meta["coarse"]["coverage"] == pytest.approx(24 / 64)
    (ok,) = _stage(min_coverage=0.3)([_item(src, src, half)])
    assert isinstance(ok, PairItem)


def test_bad_input_is_rejected_not_raised():
    rng = np.random.default_rng(0)
    src = rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)
    good = np.zeros((32, 40, 2), np.float32)
    nan = good.copy()
    nan[3, 4, 0] = np.nan
    inf = good.copy()
    inf[0, 0, 1] = np.inf
    cases = {
        "nan": _item(src, src, nan),
        "inf": _item(src, src, inf),
        "zero_size": _item(src[:0], src[:0], good[:0]),
        "flow_shape": _item(src, src, good[:10]),
        "tgt_shape": _item(src, src[:, :20], good),
        "missing": PairItem(key="m", clip_id="c", source="s", chunk=0, clip_idx=0, arrays={"src": src}),
        "int_flow": _item(src, src, good.astype(np.int32)),
    }
    out = _stage()(list(cases.values()) + [_item(src, src, good)])
    reasons = {k: (o.reason if isinstance(o, Reject) else None) for k, o in zip(cases, out)}
    assert reasons == {
        "nan": "invalid_flow",
        "inf": "invalid_flow",
        "zero_size": "bad_input",
        "flow_shape": "bad_input",
        "tgt_shape": "bad_input",
        "missing": "bad_input",
        "int_flow": "invalid_flow",
    }
    assert isinstance(out[-1], PairItem) and out[-1].meta["coarse"]["coverage"] == 1.0


def test_unavailable_device_rejects_with_reason():
    if torch.cuda.is_available():
        pytest.skip("CUDA is available")
    src = np.zeros((16, 16, 3), np.uint8)
    (r,) = _stage(device="cuda")([_item(src, src, np.zeros((16, 16, 2), np.float32))])
    assert isinstance(r, Reject) and r.reason == "device_unavailable"


def test_config_validation():
    from vid2pair.pipeline.config import ConfigError

    validate(CoarseConfig(), "coarse.")
    for kw, key in [
        ({"mode": "max"}, "coarse.mode"),
        ({"min_coverage": 1.5}, "coarse.min_coverage"),
        ({"hole_thresh": 1.0}, "coarse.hole_thresh"),
        ({"device": "tpu"}, "coarse.device"),
        ({"batch_size": 0}, "coarse.batch_size"),
    ]:
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            validate(CoarseConfig(**kw), "coarse.")
    validate(CoarseConfig(min_coverage=None, device="cuda:1", mode="avg"), "coarse.")
