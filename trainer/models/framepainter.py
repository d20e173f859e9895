"""``framepainter``: FramePainter's recipe on Stable Video Diffusion (diffusers).

Image editing as two-frame image-to-video generation:

* the video is ``[source, target]``; SVD's image conditioning is kept: the VAE latent of the source
  (with noise augmentation, unscaled, as SVD does) is concatenated on channels to both frames, and
  the CLIP image embedding of the source feeds cross-attention; ``added_time_ids`` = (fps id,
  motion bucket, noise augmentation);
* EDM training (SVD's v-parameterisation: ``c_skip = 1/(s^2+1)``, ``c_out = -s/sqrt(s^2+1)``,
  ``c_in = 1/sqrt(s^2+1)``, ``c_noise = ln(s)/4``, ``ln s ~ N(p_mean, p_std^2)``, weight
  ``(s^2+1)/s^2``); the diffusion loss covers both frames;
* a lightweight **sparse control encoder** (stem + a few diffusers ResNet blocks, timestep-
  conditioned) encodes the signal image; its features are pooled to the resolution after the
  U-Net's first down block, normalised to that feature map's mean / std (ControlNeXt-style), scaled
  and added to the **target frame only** (forward hook on ``unet.down_blocks[0]``);
* **drag points** (task ``drag``): after every spatio-temporal transformer (attention) block, the
  source frame's tokens at the source points are added to the target frame's tokens at the
  target points (forward hooks);
* **matching attention**: beside every spatial self-attention (``attn1`` of the spatial
  ``BasicTransformerBlock``), an attention processor adds a branch whose queries come from the
  target frame's tokens and keys / values from the source frame's tokens; its projections are
  copies of the spatial attention's (output projection zero-initialised, so training starts from
  SVD's behaviour); its output is zero-padded onto the source half and added;
* **matching loss** ``L_match = ||M * (A_match - C)||^2`` (per supervised layer: summed over
  source tokens, averaged over supervised target tokens and layers; ``A_match`` averaged over
  heads), with ``C`` / ``M`` from :func:`stages.matching.correspondence_index` on the stored
  tracks at each supervised token grid; ``L = L_diff + match_weight * L_match``.

What is and isn't faithful to the paper is listed in docs/trainer.md.
"""

from __future__ import annotations

import copy
import logging
import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vid2pair.trainer.config import TrainerConfig, signal_channels, task_input

log = logging.getLogger("vid2pair.trainer.framepainter")

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# Published configs of stabilityai/stable-video-diffusion-img2vid-xt-1-1 (unet/vae/image_encoder
# config.json): diffusers' defaults for the two SVD classes, CLIP ViT-H/14 for the image encoder.
SVD_UNET_CONFIG = dict(
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    up_block_types=("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    block_out_channels=(320, 640, 1280, 1280),
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=768,
    layers_per_block=2,
    cross_attention_dim=1024,
    transformer_layers_per_block=1,
    num_attention_heads=(5, 10, 20, 20),
    num_frames=25,
)
SVD_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
)
SVD_CLIP_CONFIG = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=16,
    num_hidden_layers=32,
    image_size=224,
    patch_size=14,
    projection_dim=1024,
    hidden_act="gelu",
    layer_norm_eps=1e-5,
)

TINY_UNET_CONFIG = dict(
    in_channels=8,
    out_channels=4,
    down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
    up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
    block_out_channels=(32, 64),
    addition_time_embed_dim=8,
    projection_class_embeddings_input_dim=24,
    layers_per_block=1,
    cross_attention_dim=32,
    num_attention_heads=(2, 4),
    num_frames=2,
)
TINY_VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    block_out_channels=(32, 32, 32, 32),
    layers_per_block=1,
    latent_channels=4,
)
TINY_CLIP_CONFIG = dict(
    hidden_size=32,
    intermediate_size=64,
    num_attention_heads=2,
    num_hidden_layers=2,
    image_size=32,
    patch_size=8,
    projection_dim=32,
)

NUM_FRAMES = 2  # [source, target]


def _groups(c: int, cap: int = 32) -> int:
    g = cap
    while c % g:
        g //= 2
    return max(g, 1)


# --------------------------------------------------------------------------- sparse control encoder


class SparseControlEncoder(nn.Module):
    """Signal image -> features for the U-Net (``out_channels`` = its first block's width).

    Stem (3x3 stride-2 conv, GroupNorm, SiLU, 3x3 conv) then one timestep-conditioned
    ``diffusers.models.resnet.ResnetBlock2D`` per entry of ``channels``, with a stride-2
    ``Downsample2D`` after every block but the last, then a 1x1 projection. With 3 blocks the
    output is at 1/8 of the image (the latent grid); the hook pools it to where it is injected.
    """

    def __init__(self, in_channels: int, channels: list[int], out_channels: int, temb_dim: Optional[int] = None):
        super().__init__()
        from diffusers.models.embeddings import TimestepEmbedding, Timesteps
        from diffusers.models.resnet import Downsample2D, ResnetBlock2D

        c0 = channels[0]
        temb_dim = temb_dim or 4 * c0
        self.time_proj = Timesteps(c0, flip_sin_to_cos=True, downscale_freq_shift=0)
        self.time_embedding = TimestepEmbedding(c0, temb_dim)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, c0, 3, stride=2, padding=1),
            nn.GroupNorm(_groups(c0, 8), c0),
            nn.SiLU(),
            nn.Conv2d(c0, c0, 3, padding=1),
            nn.GroupNorm(_groups(c0, 8), c0),
            nn.SiLU(),
        )
        self.blocks = nn.ModuleList()
        self.downs = nn.ModuleList()
        prev = c0
        for i, c in enumerate(channels):
            self.blocks.append(
                ResnetBlock2D(
                    in_channels=prev,
                    out_channels=c,
                    temb_channels=temb_dim,
                    groups=_groups(math.gcd(prev, c)),
                    groups_out=_groups(c),
                )
            )
            self.downs.append(
                Downsample2D(c, use_conv=True, out_channels=c, padding=1) if i < len(channels) - 1 else nn.Identity()
            )
            prev = c
        self.proj = nn.Conv2d(prev, out_channels, 1)

    def forward(self, x: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        t = timestep.reshape(-1).expand(x.shape[0]) if timestep.numel() == 1 else timestep.reshape(-1)
        emb = self.time_embedding(self.time_proj(t).to(x.dtype))
        h = self.stem(x)
        for blk, down in zip(self.blocks, self.downs):
            h = down(blk(h, emb))
        return self.proj(h)


# --------------------------------------------------------------------------- matching loss


def matching_loss_terms(attn: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``sum_i M_i sum_j (A_ij - C_ij)^2`` and ``sum_i M_i`` for one layer.

    ``attn`` (B, N_tgt, N_src) attention probabilities; ``idx`` (B, N_tgt) source token of each
    target token, -1 where ``M`` = 0 (``C`` is one-hot: ``C[i, idx[i]] = 1``). Uses
    ``sum_j (A_ij - C_ij)^2 = sum_j A_ij^2 - 2 A_i,idx(i) + 1``, so ``C`` is never materialised.
    """
    a = attn.float()
    valid = idx >= 0
    a_c = a.gather(-1, idx.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    row = (a * a).sum(-1) - 2.0 * a_c + 1.0
    return (row * valid).sum(), valid.sum().to(a.dtype)


def matching_loss_dense(attn: torch.Tensor, C: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    """Reference: ``|| M * (A - C) ||^2`` with dense ``C`` (B, N, N) and ``M`` (B, N)."""
    return ((M.unsqueeze(-1) * (attn.float() - C.float())) ** 2).sum()


# --------------------------------------------------------------------------- hooks


class _Ctx:
    """Per-forward state shared by the processors and hooks (plain object, not a module).

    It is left in place after a forward so that gradient-checkpoint recomputation during the
    backward pass sees exactly the same state; the next forward overwrites it.
    """

    def __init__(self):
        self.active = False
        self.num_frames = NUM_FRAMES
        self.grid_of: dict[int, tuple[int, int]] = {}
        self.match_idx: dict[tuple[int, int], torch.Tensor] = {}
        self.control: Optional[torch.Tensor] = None
        self.control_scale = 0.2
        self.drag: Optional[tuple[torch.Tensor, torch.Tensor]] = None
        self.image_hw = (0, 0)
        self._stack: list[list] = [[]]

    def reset(self):
        self.__init__()

    def record(self, s: torch.Tensor, n: torch.Tensor):
        self._stack[-1].append((s, n))

    def push(self):
        self._stack.append([])

    def pop(self) -> list:
        return self._stack.pop()

    def collected(self) -> list:
        return self._stack[0]


class MatchingAttnProcessor(nn.Module):
    """Processor of a spatial ``attn1``: the original attention plus the matching branch.

    An ``nn.Module`` (diffusers registers it as ``attn1.processor``, so its projections are trained,
    checkpointed and moved with the model). It defines ``__call__`` like diffusers' own module
    processors (e.g. the IP-Adapter ones).
    """

    def __init__(self, attn, ctx: _Ctx):
        super().__init__()
        self.to_q = copy.deepcopy(attn.to_q)
        self.to_k = copy.deepcopy(attn.to_k)
        self.to_v = copy.deepcopy(attn.to_v)
        self.to_out = copy.deepcopy(attn.to_out[0])
        nn.init.zeros_(self.to_out.weight)
        if self.to_out.bias is not None:
            nn.init.zeros_(self.to_out.bias)
        self.base = attn.processor  # the stock processor (AttnProcessor2_0): the unchanged path
        self.__dict__["ctx"] = ctx  # not a submodule / parameter

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.base(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask)
        ctx = self.ctx
        if not ctx.active or encoder_hidden_states is not None:
            return out
        f = ctx.num_frames
        bf, n, c = hidden_states.shape
        b = bf // f
        hs = hidden_states.reshape(b, f, n, c)
        src, tgt = hs[:, 0], hs[:, f - 1]
        heads = attn.heads
        q = self.to_q(tgt)
        k = self.to_k(src)
        v = self.to_v(src)
        d = q.shape[-1] // heads
        q, k, v = (t.reshape(b, n, heads, d).transpose(1, 2) for t in (q, k, v))
        grid = ctx.grid_of.get(n)
        idx = ctx.match_idx.get(grid) if grid is not None else None
        if idx is not None:
            logits = torch.matmul(q, k.transpose(-1, -2)).float() * attn.scale
            a = logits.softmax(-1)
            o = torch.matmul(a.to(v.dtype), v)
            ctx.record(*matching_loss_terms(a.mean(1), idx))
        else:
            o = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        o = self.to_out(o.transpose(1, 2).reshape(b, n, heads * d)).to(out.dtype)
        pad = torch.zeros_like(o)
        delta = torch.stack([pad] * (f - 1) + [o], dim=1).reshape(bf, n, -1)
        return out + delta


def _control_hook(ctx: _Ctx):
    def hook(module, args, output):
        if not ctx.active or ctx.control is None:
            return output
        sample, res = output
        bf, c, h, w = sample.shape
        f = ctx.num_frames
        b = bf // f
        s_t = sample.reshape(b, f, c, h, w)[:, f - 1]
        ctrl = F.adaptive_avg_pool2d(ctx.control.to(sample.dtype), (h, w))
        dims = (1, 2, 3)
        ctrl = (ctrl - ctrl.mean(dims, keepdim=True)) / (ctrl.std(dims, keepdim=True) + 1e-5)
        ctrl = ctrl * s_t.std(dims, keepdim=True).detach() + s_t.mean(dims, keepdim=True).detach()
        pad = torch.zeros_like(ctrl)
        delta = torch.stack([pad] * (f - 1) + [ctrl * ctx.control_scale], dim=1).reshape(bf, c, h, w)
        return (sample + delta, res)

    return hook


def _drag_hook(ctx: _Ctx):
    def hook(module, args, kwargs, output):
        if not ctx.active or ctx.drag is None:
            return output
        tuple_out = isinstance(output, tuple)
        hs = output[0] if tuple_out else output.sample
        pts, valid = ctx.drag
        if not bool(valid.any()):
            return output
        bf, c, h, w = hs.shape
        f = ctx.num_frames
        H, W = ctx.image_hw

        def tok(x, y):
            cc = torch.floor((x + 0.5) * (w / W)).long().clamp(0, w - 1)
            rr = torch.floor((y + 0.5) * (h / H)).long().clamp(0, h - 1)
            return rr * w + cc

        b_idx = torch.arange(pts.shape[0], device=hs.device)[:, None].expand(valid.shape)[valid]
        p = pts[valid].to(hs.device).float()
        s_tok, t_tok = tok(p[:, 0], p[:, 1]), tok(p[:, 2], p[:, 3])
        flat = hs.permute(0, 2, 3, 1).reshape(bf, h * w, c)
        vals = flat[b_idx * f, s_tok]
        new = torch.index_put(flat, (b_idx * f + (f - 1), t_tok), vals, accumulate=True)
        new = new.reshape(bf, h, w, c).permute(0, 3, 1, 2)
        if tuple_out:
            return (new,) + tuple(output[1:])
        output.sample = new
        return output

    return hook


# --------------------------------------------------------------------------- model


def token_grids(resolution, n_levels: int) -> list[tuple[int, int]]:
    """Token grids (h, w) of the U-Net's levels: the latent grid (1/8), halved (ceil) per level."""
    h, w = resolution[0] // 8, resolution[1] // 8
    grids = []
    for _ in range(n_levels):
        grids.append((h, w))
        h, w = (h + 1) // 2, (w + 1) // 2
    return grids


def supervised_grids(fp, resolution, n_levels: int = 4) -> list[tuple[int, int]]:
    """The grids whose matching attention is supervised (<= ``match_max_tokens`` tokens)."""
    if not fp.matching or fp.match_weight <= 0:
        return []
    return [g for g in token_grids(resolution, n_levels) if g[0] * g[1] <= fp.match_max_tokens]


def _dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_components(fp, frozen_dtype: torch.dtype):
    """(unet, vae, image_encoder): SVD from a local directory (``pretrained``), SVD's architecture
    with random weights (``svd_random``: throughput / memory runs without the gated weights), or a
    tiny random configuration (``tiny_random``: tests)."""
    from diffusers import AutoencoderKLTemporalDecoder, UNetSpatioTemporalConditionModel
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    if fp.init in ("tiny_random", "svd_random"):
        tiny = fp.init == "tiny_random"
        unet = UNetSpatioTemporalConditionModel(**(TINY_UNET_CONFIG if tiny else SVD_UNET_CONFIG))
        vae = AutoencoderKLTemporalDecoder(**(TINY_VAE_CONFIG if tiny else SVD_VAE_CONFIG))
        enc = CLIPVisionModelWithProjection(CLIPVisionConfig(**(TINY_CLIP_CONFIG if tiny else SVD_CLIP_CONFIG)))
        if frozen_dtype != torch.float32:
            vae, enc = vae.to(frozen_dtype), enc.to(frozen_dtype)
        return unet, vae, enc
    from vid2pair.pipeline.models import resolve_weights

    root = resolve_weights(fp.base_model, fp.weights, config_key="model.framepainter.weights")

    def load(fn, *a, **kw):
        try:
            return fn(*a, variant=fp.variant, **kw)
        except (OSError, ValueError, EnvironmentError):
            if fp.variant is None:
                raise
            log.info("no '%s' variant files in %s; loading the plain ones", fp.variant, root)
            return fn(*a, **kw)

    unet = load(UNetSpatioTemporalConditionModel.from_pretrained, root, subfolder="unet", torch_dtype=torch.float32)
    vae = load(AutoencoderKLTemporalDecoder.from_pretrained, root, subfolder="vae", torch_dtype=frozen_dtype)
    enc = load(CLIPVisionModelWithProjection.from_pretrained, str(root / "image_encoder"))
    return unet, vae, enc.to(frozen_dtype)


class FramePainterModel(nn.Module):
    def __init__(self, cfg: TrainerConfig, device: torch.device = torch.device("cpu")):
        super().__init__()
        fp = cfg.model.framepainter
        self.fp, self.task = fp, cfg.task
        self.resolution = tuple(cfg.model.resolution)
        self.frozen_dtype = _dtype(fp.frozen_dtype, device)
        unet, vae, enc = build_components(fp, self.frozen_dtype)
        self.unet, self.vae, self.image_encoder = unet, vae, enc
        for m in (self.vae, self.image_encoder):
            m.requires_grad_(False)
            m.eval()
        self.control = SparseControlEncoder(
            signal_channels(cfg.task), list(fp.control_channels), unet.config.block_out_channels[0]
        )
        self.ctx = _Ctx()
        self.n_matching = 0
        if fp.matching:
            self._install_matching()
        self.unet.down_blocks[0].register_forward_hook(_control_hook(self.ctx))
        self.n_drag_hooks = 0
        # drag injection: for a task whose input gives drag points (the drag task)
        self.drags = fp.drag_injection and "drag_points" in task_input(cfg.task).extras
        if self.drags:
            from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

            for m in self.unet.modules():
                if isinstance(m, TransformerSpatioTemporalModel):
                    m.register_forward_hook(_drag_hook(self.ctx), with_kwargs=True)
                    self.n_drag_hooks += 1
        if fp.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing(gradient_checkpointing_func=self._checkpoint)
        self._select_trainable(fp.trainable)

    # --- construction helpers
    def _install_matching(self):
        from diffusers.models.transformers.transformer_temporal import TransformerSpatioTemporalModel

        for m in self.unet.modules():
            if isinstance(m, TransformerSpatioTemporalModel):
                for blk in m.transformer_blocks:  # spatial blocks only (not temporal_transformer_blocks)
                    attn = blk.attn1
                    if getattr(attn, "norm_q", None) is not None or getattr(attn, "spatial_norm", None) is not None:
                        raise NotImplementedError("matching attention expects SVD's plain spatial attn1")
                    attn.set_processor(MatchingAttnProcessor(attn, self.ctx))
                    self.n_matching += 1

    def _select_trainable(self, mode: str):
        self.unet.requires_grad_(mode == "all")
        if mode == "attention":
            for name, p in self.unet.named_parameters():
                if ".attn1." in name or ".attn2." in name or ".processor." in name:
                    p.requires_grad_(True)
        self.control.requires_grad_(True)

    def _checkpoint(self, module, *args):
        """diffusers gradient-checkpointing function that carries the matching-loss terms recorded
        inside the checkpointed block out as real outputs (so they keep their gradient)."""
        from torch.utils.checkpoint import checkpoint

        ctx = self.ctx

        def run(*a):
            ctx.push()
            out = module(*a)
            terms = ctx.pop()
            if not terms:
                return out, None, None
            return out, torch.stack([t[0] for t in terms]), torch.stack([t[1] for t in terms])

        out, s, n = checkpoint(run, *args, use_reentrant=False)
        if s is not None:
            for i in range(s.shape[0]):
                ctx.record(s[i], n[i])
        return out

    # --- interface used by the trainer
    def trainable_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def checkpoint_state_dict(self) -> dict:
        """U-Net (with the matching projections) and control encoder; the frozen VAE / CLIP come
        from the base weights."""
        return {"unet": self.unet.state_dict(), "control": self.control.state_dict()}

    def load_checkpoint_state_dict(self, sd: dict) -> None:
        self.unet.load_state_dict(sd["unet"])
        self.control.load_state_dict(sd["control"])

    def train(self, mode: bool = True):
        super().train(mode)
        self.vae.eval()
        self.image_encoder.eval()
        return self

    def level_grids(self) -> list[tuple[int, int]]:
        return token_grids(self.resolution, len(self.unet.down_blocks))

    @property
    def match_grids(self) -> list[tuple[int, int]]:
        return supervised_grids(self.fp, self.resolution, len(self.unet.down_blocks))

    # --- pieces
    def _frozen_device(self):
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def _encode(self, src: torch.Tensor, tgt: Optional[torch.Tensor], generator=None):
        vae, dt = self.vae, self.frozen_dtype
        sf = vae.config.scaling_factor
        b = src.shape[0]
        noise = torch.randn(src.shape, generator=generator, device=src.device, dtype=src.dtype)
        cond_img = src + self.fp.noise_aug_strength * noise
        cond = vae.encode(cond_img.to(dt)).latent_dist.mode().float()  # unscaled, as SVD
        cond = cond.unsqueeze(1).expand(b, NUM_FRAMES, *cond.shape[1:])
        lat = None
        if tgt is not None:
            frames = torch.stack([src, tgt], 1).flatten(0, 1)
            lat = vae.encode(frames.to(dt)).latent_dist.sample(generator=generator).float() * sf
            lat = lat.reshape(b, NUM_FRAMES, *lat.shape[1:])
        size = self.fp.clip_size or self.image_encoder.config.image_size
        x = ((src + 1) / 2).clamp(0, 1)
        x = F.interpolate(x, size=(size, size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        emb = self.image_encoder(pixel_values=((x - mean) / std).to(dt)).image_embeds.float().unsqueeze(1)
        return lat, cond, emb

    def _time_ids(self, b: int, device) -> torch.Tensor:
        fp = self.fp
        return torch.tensor([[fp.fps_id, fp.motion_bucket_id, fp.noise_aug_strength]] * b, device=device)

    def _set_ctx(self, batch: dict, control: Optional[torch.Tensor], supervise: bool):
        ctx = self.ctx
        ctx.reset()
        ctx.active = True
        ctx.control = control
        ctx.control_scale = self.fp.control_scale
        ctx.image_hw = self.resolution
        ctx.grid_of = {h * w: (h, w) for (h, w) in self.level_grids()}
        if supervise:
            for h, w in self.match_grids:
                k = f"match_idx_{h}x{w}"
                if k in batch:
                    ctx.match_idx[(h, w)] = batch[k]
        if self.drags and "drag_points" in batch:
            ctx.drag = (batch["drag_points"], batch["drag_valid"])

    def _denoise(self, x, sigma, cond, emb, time_ids, signal, batch, supervise):
        """EDM preconditioned call: returns (D(x; sigma), raw U-Net output F, c_skip, c_out)."""
        s = sigma.reshape(-1, 1, 1, 1, 1)
        c_in = 1 / (s**2 + 1).sqrt()
        c_skip = 1 / (s**2 + 1)
        c_out = -s / (s**2 + 1).sqrt()
        c_noise = sigma.log() / 4
        control = self.control(signal.to(self.control.proj.weight.dtype), c_noise)
        self._set_ctx(batch, control, supervise)
        dt = self.unet.dtype  # fp32 master weights (autocast does the rest); bf16 if the U-Net is bf16
        inp = torch.cat([c_in * x, cond], dim=2).to(dt)
        out = self.unet(
            inp, c_noise, encoder_hidden_states=emb.to(dt), added_time_ids=time_ids.to(dt), return_dict=False
        )[0]
        return c_skip * x + c_out * out.float(), out, c_skip, c_out

    # --- training loss
    def forward(self, batch: dict, generator: Optional[torch.Generator] = None):
        src, tgt, signal = batch["src"], batch["tgt"], batch["signal"]
        b = src.shape[0]
        lat, cond, emb = self._encode(src, tgt, generator)
        sigma = (self.fp.p_mean + self.fp.p_std * torch.randn(b, device=src.device, generator=generator)).exp()
        noise = torch.randn(lat.shape, device=lat.device, generator=generator)
        x = lat + sigma.reshape(-1, 1, 1, 1, 1) * noise
        _, out, c_skip, c_out = self._denoise(
            x, sigma, cond, emb, self._time_ids(b, src.device), signal, batch, supervise=True
        )
        target = (lat - c_skip * x) / c_out  # weight (s^2+1)/s^2 * ||D - x0||^2 == ||F - target||^2
        loss_diff = F.mse_loss(out.float(), target)
        logs = {"loss_diff": loss_diff.detach()}
        terms = self.ctx.collected()
        loss = loss_diff
        if terms:
            per_layer = torch.stack([s / n.clamp(min=1) for s, n in terms])
            loss_match = per_layer.mean()
            loss = loss + self.fp.match_weight * loss_match
            logs["loss_match"] = loss_match.detach()
            logs["match_rows"] = torch.stack([n for _, n in terms]).mean().detach()
        self.ctx._stack = [[]]  # terms are in the graph now; drop the references
        return loss, logs

    # --- sampling
    @torch.no_grad()
    def predict(self, batch: dict, steps: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """Euler sampler on the Karras sigma schedule (SVD's scheduler setting, no CFG);
        returns the decoded target frame, (B, 3, H, W) in [-1, 1]."""
        src, signal = batch["src"], batch["signal"]
        b = src.shape[0]
        fp = self.fp
        _, cond, emb = self._encode(src, None, generator)
        steps = steps or fp.sample_steps
        rho = 7.0
        ramp = torch.linspace(0, 1, steps, device=src.device)
        sigmas = (fp.sigma_max ** (1 / rho) + ramp * (fp.sigma_min ** (1 / rho) - fp.sigma_max ** (1 / rho))) ** rho
        sigmas = torch.cat([sigmas, sigmas.new_zeros(1)])
        h, w = self.resolution[0] // 8, self.resolution[1] // 8
        c_lat = self.vae.config.latent_channels
        x = torch.randn((b, NUM_FRAMES, c_lat, h, w), device=src.device, generator=generator) * sigmas[0]
        time_ids = self._time_ids(b, src.device)
        for i in range(steps):
            s = sigmas[i].expand(b)
            den, *_ = self._denoise(x, s, cond, emb, time_ids, signal, batch, supervise=False)
            d = (x - den) / sigmas[i]
            x = x + d * (sigmas[i + 1] - sigmas[i])
        self.ctx.reset()
        z = x[:, NUM_FRAMES - 1] / self.vae.config.scaling_factor
        img = self.vae.decode(z.to(self.frozen_dtype), num_frames=1).sample.float()
        return img.clamp(-1, 1)
