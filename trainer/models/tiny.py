"""``tiny``: a small conditional pixel-space diffusion U-Net, (source, signal) -> target.

Concat conditioning: the network sees ``[x_t, source, signal]`` on channels and predicts ``v``
(default) or ``eps`` for the noisy target ``x_t``. DDPM training over ``num_train_timesteps`` with a
cosine (Nichol & Dhariwal 2021) or linear beta schedule; deterministic DDIM sampling for eval
predictions. Written here, no pretrained weights: it trains on CPU in the tests and is the quick
baseline on a GPU.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from vid2pair.trainer.config import TrainerConfig, signal_channels


def _groups(ch: int) -> int:
    for g in (8, 4, 2, 1):
        if ch % g == 0:
            return g
    return 1


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float):
        super().__init__()
        self.n1 = nn.GroupNorm(_groups(cin), cin)
        self.c1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(temb, 2 * cout)  # scale and shift
        self.n2 = nn.GroupNorm(_groups(cout), cout)
        self.drop = nn.Dropout(dropout)
        self.c2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        h = self.c2(self.drop(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    def __init__(self, ch: int, heads: int = 4):
        super().__init__()
        self.heads = heads if ch % heads == 0 else 1
        self.norm = nn.GroupNorm(_groups(ch), ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.out = nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x):
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).unbind(1)
        o = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.out(o.transpose(-1, -2).reshape(b, c, h, w))


class TinyUNet(nn.Module):
    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        base: int = 32,
        mults=(1, 2, 2),
        num_res: int = 1,
        attention: bool = True,
        dropout: float = 0.0,
    ):
        super().__init__()
        temb = base * 4
        self.base = base
        self.temb = nn.Sequential(nn.Linear(base, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(in_ch, base, 3, padding=1)
        chans = [base * m for m in mults]
        self.down = nn.ModuleList()
        skips = [base]
        ch = base
        for i, c in enumerate(chans):
            for _ in range(num_res):
                self.down.append(ResBlock(ch, c, temb, dropout))
                ch = c
                skips.append(ch)
            if i < len(chans) - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                skips.append(ch)
        self.mid1 = ResBlock(ch, ch, temb, dropout)
        self.mid_attn = SelfAttention(ch) if attention else nn.Identity()
        self.mid2 = ResBlock(ch, ch, temb, dropout)
        self.up = nn.ModuleList()
        for i, c in reversed(list(enumerate(chans))):
            for _ in range(num_res + 1):
                self.up.append(ResBlock(ch + skips.pop(), c, temb, dropout))
                ch = c
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(ch, ch, 3, padding=1))
        self.out_norm = nn.GroupNorm(_groups(ch), ch)
        self.out = nn.Conv2d(ch, out_ch, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x, t):
        emb = self.temb(timestep_embedding(t, self.base))
        h = self.inp(x)
        hs = [h]
        for m in self.down:
            h = m(h, emb) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], 1), emb)
            else:
                h = m(h)
        return self.out(F.silu(self.out_norm(h)))


def make_alphas_cumprod(schedule: str, T: int) -> torch.Tensor:
    if schedule == "linear":
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
        return torch.cumprod(1 - betas, 0).float()
    s = 0.008
    steps = torch.arange(T + 1, dtype=torch.float64) / T
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    return torch.cumprod(1 - betas, 0).float()


class TinyDiffusion(nn.Module):
    """Training loss and DDIM sampler around :class:`TinyUNet`."""

    def __init__(self, cfg: TrainerConfig):
        super().__init__()
        t = cfg.model.tiny
        self.task = cfg.task
        self.prediction = t.prediction
        self.residual = bool(t.residual)
        self.T = t.num_train_timesteps
        self.sample_steps = t.sample_steps
        c_sig = signal_channels(cfg.task)
        self.net = TinyUNet(
            3 + 3 + c_sig, 3, t.base_channels, tuple(t.channel_mults), t.num_res_blocks, t.attention, t.dropout
        )
        self.register_buffer("alphas_cumprod", make_alphas_cumprod(t.schedule, self.T), persistent=False)

    match_grids: list = []

    def trainable_named_parameters(self):
        return [(n, p) for n, p in self.named_parameters() if p.requires_grad]

    def checkpoint_state_dict(self) -> dict:
        return self.state_dict()

    def load_checkpoint_state_dict(self, sd: dict) -> None:
        self.load_state_dict(sd)

    def _ab(self, t: torch.Tensor) -> torch.Tensor:
        return self.alphas_cumprod.to(t.device)[t][:, None, None, None]

    def _eps_x0(self, out, x_t, ab):
        if self.prediction == "eps":
            eps = out
            x0 = (x_t - (1 - ab).sqrt() * eps) / ab.sqrt()
        else:  # v = sqrt(ab) eps - sqrt(1 - ab) x0
            x0 = ab.sqrt() * x_t - (1 - ab).sqrt() * out
            eps = (1 - ab).sqrt() * x_t + ab.sqrt() * out
        return eps, x0

    def forward(self, batch: dict, generator: Optional[torch.Generator] = None):
        src, tgt, sig = batch["src"], batch["tgt"], batch["signal"]
        b = tgt.shape[0]
        t = torch.randint(0, self.T, (b,), device=tgt.device, generator=generator)
        noise = torch.randn(tgt.shape, device=tgt.device, generator=generator, dtype=tgt.dtype)
        ab = self._ab(t)
        x0 = (tgt - src) / 2 if self.residual else tgt  # both in [-1, 1]
        x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
        out = self.net(torch.cat([x_t, src, sig], 1), t)
        target = noise if self.prediction == "eps" else ab.sqrt() * noise - (1 - ab).sqrt() * x0
        loss = F.mse_loss(out.float(), target.float())
        return loss, {"loss_diff": loss.detach()}

    @torch.no_grad()
    def predict(self, batch: dict, steps: Optional[int] = None, generator: Optional[torch.Generator] = None):
        """Deterministic DDIM (eta 0) from pure noise; returns (B, 3, H, W) in [-1, 1]."""
        src, sig = batch["src"], batch["signal"]
        steps = steps or self.sample_steps
        x = torch.randn(src.shape, device=src.device, generator=generator, dtype=src.dtype)
        ts = torch.linspace(self.T - 1, 0, steps).round().long().tolist()
        for i, ti in enumerate(ts):
            t = torch.full((src.shape[0],), ti, device=src.device, dtype=torch.long)
            ab = self._ab(t)
            out = self.net(torch.cat([x, src, sig], 1), t)
            eps, x0 = self._eps_x0(out.float(), x.float(), ab)
            x0 = x0.clamp(-1, 1)
            if i == len(ts) - 1:
                x = x0
            else:
                eps = (x.float() - ab.sqrt() * x0) / (1 - ab).sqrt()  # consistent with the clamped x0
                ab_next = self._ab(torch.full_like(t, ts[i + 1]))
                x = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        if self.residual:
            x = src.float() + 2 * x
        return x.clamp(-1, 1)
