"""FramePainter model on a TINY random diffusers config (no weights): hooks, matching loss,
forward/backward, gradient checkpointing, training + resume through the trainer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vid2pair.trainer.config import load_train_config
from vid2pair.trainer.data import build_train_loader, sample_spec
from vid2pair.trainer.models.framepainter import (
    MatchingAttnProcessor,
    _control_hook,
    _Ctx,
    _drag_hook,
    matching_loss_dense,
    matching_loss_terms,
)
from vid2pair.trainer.testing import demo_shards

ROOT = Path(__file__).resolve().parent.parent
TINY = [
    "model.framepainter.init=tiny_random",
    "model.resolution=[64, 64]",
    "model.framepainter.control_channels=[16, 32, 32]",
    "model.framepainter.sample_steps=2",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.shuffle_buffer=8",
    "data.eval=null",
    "data.eval_permille=0",
    "train.num_threads=2",
    "train.eval_every=0",
    "train.ema_decay=null",
    "optim.lr=0.0001",
]


@pytest.fixture(scope="session")
def shards(tmp_path_factory) -> Path:
    return demo_shards(tmp_path_factory.getbasetemp() / "trainer_demo")


def fp_cfg(shards, out, task="sketch", *extra):
    return load_train_config(
        ROOT / "configs" / f"train_framepainter_{'drag' if task == 'drag' else 'sketch'}.yaml",
        [f"data.train={shards}", f"train.output_dir={out}", f"task={task}", *TINY, *extra],
    )


def batch_for(cfg, model):
    loader = build_train_loader(cfg, sample_spec(cfg, model.match_grids))
    return next(iter(loader))


# --------------------------------------------------------------------------- matching loss


def test_matching_loss_zero_when_attention_equals_C():
    from vid2pair.stages.matching import correspondence

    rng = np.random.default_rng(0)
    H, W, grid = 48, 64, (6, 8)
    n = grid[0] * grid[1]
    # tracks: target token centres moved by a random shift, some invisible, some leaving the frame
    ys, xs = (np.mgrid[0:H:8, 0:W:8].reshape(2, -1) + 3.5).astype(np.float32)  # one track per token
    tracks = np.stack([xs, ys, xs + rng.normal(0, 6, xs.shape), ys + rng.normal(0, 6, ys.shape)], 1)
    vis = (rng.random(len(xs)) > 0.2).astype(np.uint8)
    C, M = correspondence(tracks, vis, (W, H), grid)
    idx = torch.from_numpy(np.where(M > 0, C.argmax(1), -1))[None]
    C_t, M_t = torch.from_numpy(C)[None], torch.from_numpy(M)[None]
    assert 0.3 < M.mean() < 1.0
    # A == C on the supervised rows (anything, normalised, on the others): exactly zero
    A = torch.softmax(torch.randn(1, n, n), -1)
    A[0, M > 0] = C_t[0, M > 0]
    s, cnt = matching_loss_terms(A, idx)
    assert float(s) == 0.0 and int(cnt) == int(M.sum())
    assert float(matching_loss_dense(A, C_t, M_t)) == 0.0
    # otherwise the one-hot shortcut equals the dense definition
    A = torch.softmax(3 * torch.randn(2, n, n), -1)
    idx2, C2, M2 = idx.expand(2, -1), C_t.expand(2, -1, -1), M_t.expand(2, -1)
    s, _ = matching_loss_terms(A, idx2)
    assert torch.allclose(s, matching_loss_dense(A, C2, M2), rtol=1e-5)
    assert float(s) > 0


def _fake_attn(dim, heads):
    from diffusers.models.attention_processor import Attention

    return Attention(query_dim=dim, heads=heads, dim_head=dim // heads, bias=False, out_bias=True)


def test_matching_processor_attention_and_loss_through_the_branch():
    """The processor's matching branch: queries from target tokens, keys/values from source tokens,
    output only on the target half; when the branch's attention is one-hot on C the loss is ~0."""
    torch.manual_seed(0)
    dim, heads, n = 32, 2, 16  # a 4x4 token grid, 2 heads of 16 channels
    attn = _fake_attn(dim, heads)
    ctx = _Ctx()
    proc = MatchingAttnProcessor(attn, ctx)
    # orthonormal source tokens (in each head); target token i carries source token perm[i]'s features
    perm = torch.randperm(n)
    src = torch.cat([torch.eye(n), torch.eye(n)], 1)
    tgt = src[perm]
    hs = torch.stack([src, tgt], 0)  # (B*F = 2, N, C), B = 1
    with torch.no_grad():
        for lin in (proc.to_q, proc.to_k):
            lin.weight.copy_(torch.eye(dim) * 12.0)  # sharp: softmax ~ one-hot on the matching token
        proc.to_out.weight.copy_(torch.eye(dim))
    ctx.active, ctx.grid_of = True, {n: (4, 4)}
    ctx.match_idx = {(4, 4): perm[None]}
    base = attn.processor(attn, hs)
    out = proc(attn, hs)
    ((s, cnt),) = ctx.collected()
    assert int(cnt) == n and float(s.detach()) / n < 1e-4
    # the source half is untouched, the target half gets attention over the source tokens
    assert torch.allclose(out[0], base[0])
    q = proc.to_q(tgt).reshape(n, heads, -1).transpose(0, 1)
    k = proc.to_k(src).reshape(n, heads, -1).transpose(0, 1)
    v = proc.to_v(src).reshape(n, heads, -1).transpose(0, 1)
    a = torch.softmax(q @ k.transpose(-1, -2) * attn.scale, -1)
    ref = proc.to_out((a @ v).transpose(0, 1).reshape(n, dim))
    assert torch.allclose(out[1], base[1] + ref, atol=1e-5)
    # a wrong correspondence costs ~2 per row
    ctx._stack = [[]]
    ctx.match_idx = {(4, 4): perm.roll(1)[None]}
    proc(attn, hs)
    ((s, cnt),) = ctx.collected()
    assert float(s.detach()) / n > 1.9


def test_control_and_drag_hooks_touch_only_the_target_frame():
    torch.manual_seed(0)
    ctx = _Ctx()
    ctx.active = True
    b, f, c, h, w = 2, 2, 8, 4, 6
    sample = torch.randn(b * f, c, h, w)
    ctx.control = torch.randn(b, c, 8, 12)
    ctx.control_scale = 0.5
    new, res = _control_hook(ctx)(None, None, (sample, ("res",)))
    assert res == ("res",)
    new = new.reshape(b, f, c, h, w)
    old = sample.reshape(b, f, c, h, w)
    assert torch.equal(new[:, 0], old[:, 0]) and not torch.allclose(new[:, 1], old[:, 1])
    # drag: token at the target point += token at the source point (image 32 x 48 -> grid 4 x 6)
    ctx.image_hw = (32, 48)
    pts = torch.zeros(b, 3, 4)
    pts[0, 0] = torch.tensor([4.0, 4.0, 44.0, 28.0])  # (0, 0) on the source -> (3, 5) on the target
    valid = torch.tensor([[True, False, False], [False, False, False]])
    ctx.drag = (pts, valid)
    (out,) = _drag_hook(ctx)(None, (), {}, (sample,))
    diff = (out - sample).reshape(b, f, c, h, w)
    assert torch.allclose(diff[0, 1, :, 3, 5], sample.reshape(b, f, c, h, w)[0, 0, :, 0, 0])
    diff[0, 1, :, 3, 5] = 0
    assert diff.abs().max() == 0


# --------------------------------------------------------------------------- the model


def test_hooks_leave_svd_unchanged_at_init(shards, tmp_path):
    """Zero-initialised matching output + control scale 0: the wrapped U-Net computes exactly what
    the stock diffusers U-Net computes with the same weights."""
    from diffusers import UNetSpatioTemporalConditionModel

    from vid2pair.trainer.models import build_model

    torch.manual_seed(0)
    cfg = fp_cfg(
        shards,
        tmp_path,
        "drag",
        "model.framepainter.control_scale=0.0",
        "model.framepainter.gradient_checkpointing=false",
    )
    model = build_model(cfg).eval()
    stock = UNetSpatioTemporalConditionModel.from_config(model.unet.config).eval()
    sd = {k: v for k, v in model.unet.state_dict().items() if ".processor." not in k}
    stock.load_state_dict(sd)
    batch = batch_for(cfg, model)
    x = torch.randn(2, 2, 8, 8, 8)
    t = torch.tensor([0.3, -0.2])
    emb = torch.randn(2, 1, 32)
    ids = torch.tensor([[6.0, 128.0, 0.02]] * 2)
    with torch.no_grad():
        model._set_ctx(batch, model.control(batch["signal"], t), supervise=True)
        model.ctx.drag = None  # drag copies change features by design
        ours = model.unet(x, t, encoder_hidden_states=emb, added_time_ids=ids).sample
        ref = stock(x, t, encoder_hidden_states=emb, added_time_ids=ids).sample
    assert model.n_matching == 4
    assert torch.allclose(ours, ref, atol=1e-5)
    assert len(model.ctx.collected()) == 4  # ... while the matching branch was computed and supervised


@pytest.mark.parametrize("task", ["sketch", "drag"])
def test_forward_backward_tiny_config(shards, tmp_path, task):
    from vid2pair.trainer.models import build_model

    torch.manual_seed(0)
    cfg = fp_cfg(shards, tmp_path, task)
    model = build_model(cfg)
    assert model.match_grids == [(8, 8), (4, 4)]
    assert (model.n_drag_hooks > 0) == (task == "drag")
    batch = batch_for(cfg, model)
    loss, logs = model(batch)
    assert torch.isfinite(loss) and float(logs["loss_match"]) > 0 and float(logs["loss_diff"]) > 0
    loss.backward()
    named = dict(model.named_parameters())
    for part in (
        "control.proj.weight",
        "unet.conv_in.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_q.weight",
        "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.processor.to_out.weight",
    ):
        g = named[part].grad
        assert g is not None and g.abs().sum() > 0, part
    assert all(p.grad is None for n, p in named.items() if n.startswith(("vae.", "image_encoder.")))
    pred = model.predict(batch, steps=2, generator=torch.Generator().manual_seed(0))
    assert pred.shape == batch["tgt"].shape and pred.abs().max() <= 1


def test_gradient_checkpointing_keeps_the_matching_gradient(shards, tmp_path):
    """diffusers' checkpointing re-runs blocks in backward; our checkpoint function carries the
    matching-loss terms out of the checkpointed blocks, so losses and gradients are identical."""
    import torch.utils.checkpoint as tuc

    from vid2pair.trainer.models import build_model

    real = tuc.checkpoint
    carried = []

    def spy(fn, *a, **kw):
        out = real(fn, *a, **kw)
        carried.append(out[1] is not None)
        return out

    results = []
    for gc in (False, True):
        torch.manual_seed(0)
        cfg = fp_cfg(shards, tmp_path, "sketch", f"model.framepainter.gradient_checkpointing={str(gc).lower()}")
        model = build_model(cfg)
        batch = batch_for(cfg, model)
        torch.manual_seed(1)
        tuc.checkpoint = spy
        try:
            loss, logs = model(batch)
        finally:
            tuc.checkpoint = real
        loss.backward()
        q = model.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.processor.to_q.weight.grad
        results.append((float(loss.detach()), float(logs["loss_match"]), q.clone()))
    (l0, m0, g0), (l1, m1, g1) = results
    assert len(carried) > 4 and sum(carried) == 4  # every supervised block was checkpointed
    assert abs(l0 - l1) < 1e-5 and abs(m0 - m1) < 1e-6
    assert g0.abs().sum() > 0 and torch.allclose(g0, g1, atol=1e-6, rtol=1e-4)


def test_train_and_resume_framepainter(shards, tmp_path):
    """Two steps through the trainer (checkpoint), resume for one more: weights_only checkpoint with
    the U-Net (matching projections included) and the control encoder; no VAE / CLIP inside."""
    from vid2pair.trainer.checkpoint import load_state
    from vid2pair.trainer.train import train

    out = tmp_path / "fp"
    common = [
        "train.log_every=1",
        "train.ckpt_every=2",
        "train.total_batch_size=null",
        "train.grad_accum=2",
        "data.batch_size=1",
    ]
    train(fp_cfg(shards, out, "sketch", "train.max_steps=2", *common))
    s2 = load_state(out)
    assert s2["step"] == 2 and set(s2["model"]) == {"unet", "control"}
    assert any(".processor.to_q." in k for k in s2["model"]["unet"])
    train(fp_cfg(shards, out, "sketch", "train.max_steps=3", *common), resume=True)
    m = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in m] == [1, 2, 3]
    assert all(np.isfinite(r["loss"]) and r["loss_match"] > 0 for r in m)
    s3 = load_state(out)
    assert s3["step"] == 3 and s3["grad_accum"] == 2
    changed = [k for k, v in s3["model"]["control"].items() if not torch.equal(v, s2["model"]["control"][k])]
    assert changed
    # vid2pair eval on it, with a (tiny, random) local CLIP model: the CLIP-I score is computed
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vid2pair.trainer.evaluate import evaluate
    from vid2pair.trainer.models.framepainter import TINY_CLIP_CONFIG

    clip_dir = tmp_path / "clip"
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG)).save_pretrained(clip_dir)
    held_out = sorted(shards.glob("*.tar"))[-1]
    cfg = fp_cfg(shards, out, "sketch", f"eval.clip_weights={clip_dir}", f"data.eval={held_out}", "eval.batch_size=2")
    report = evaluate(cfg, out, output=str(tmp_path / "eval"), max_eval=2, steps=2)
    assert report["n"] == 2 and report["step"] == 3
    assert -1 <= report["metrics"]["model_clip_i"]["mean"] <= 1 and "clip" not in report["skipped"]
    assert np.isfinite(report["metrics"]["model_psnr"]["mean"])
    # the same report as the tiny model's: baselines and the changed region
    assert set(report["scores"]) == {"model", "source"} and report["scores"]["source"]["psnr_changed"] is not None


def test_pretrained_loading_from_a_local_svd_directory(tmp_path):
    """The `pretrained` path: a diffusers SVD layout (unet/, vae/ with the fp16 variant, image_encoder/
    without) at model.framepainter.weights; a missing directory names the key and the fetch command."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from vid2pair.pipeline.models import MissingWeightsError
    from vid2pair.trainer.models import build_model
    from vid2pair.trainer.models.framepainter import TINY_CLIP_CONFIG, TINY_UNET_CONFIG, TINY_VAE_CONFIG

    torch.manual_seed(0)
    d = tmp_path / "svd"
    unet = UNetSpatioTemporalConditionModel(**TINY_UNET_CONFIG)
    unet.save_pretrained(d / "unet", variant="fp16")
    AutoencoderKLTemporalDecoder(**TINY_VAE_CONFIG).save_pretrained(d / "vae", variant="fp16")
    CLIPVisionModelWithProjection(CLIPVisionConfig(**TINY_CLIP_CONFIG)).save_pretrained(d / "image_encoder")
    over = ["data.train=unused", "model.resolution=[64, 64]", "model.framepainter.control_channels=[16, 32, 32]"]
    cfg = load_train_config(
        ROOT / "configs" / "train_framepainter_sketch.yaml", [*over, f"model.framepainter.weights={d}"]
    )
    model = build_model(cfg)
    assert model.n_matching == 4
    w = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.weight"
    assert torch.equal(model.unet.state_dict()[w], unet.state_dict()[w])
    # the matching branch starts as a copy of the spatial attention's projections
    assert torch.equal(model.unet.state_dict()[w.replace("attn1.to_q", "attn1.processor.to_q")], unet.state_dict()[w])
    cfg = load_train_config(
        ROOT / "configs" / "train_framepainter_sketch.yaml", [*over, f"model.framepainter.weights={tmp_path / 'nope'}"]
    )
    with pytest.raises(MissingWeightsError, match="model.framepainter.weights"):
        build_model(cfg)
