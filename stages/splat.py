"""Forward warping by softmax splatting, backward warping, and the Magic Fixup splatting metric.

Pure PyTorch (CPU and CUDA, batched); the scatter is ``Tensor.index_add_`` on flattened pixel
indices, no custom kernels. Conventions follow :mod:`stages.flow`: pixel ``(x, y)`` is column
``x``, row ``y``, integer coordinates are pixel centres, and ``flow[:, 0]`` / ``flow[:, 1]`` are
the ``dx`` / ``dy`` that carry a pixel of the warped image to its position in the other frame.

Splatting (forward warping)
---------------------------
Every source pixel ``q`` lands at ``q + F(q)`` and is shared among the four pixels around that
point with the bilinear weights ``w(q -> p)`` (they sum to 1). With a per-pixel metric ``Z``::

    sum     out(p) = sum_q w(q->p) I_q
    avg     out(p) = sum_q w(q->p) I_q            / sum_q w(q->p)
    linear  out(p) = sum_q w(q->p) Z_q I_q        / sum_q w(q->p) Z_q          (Z > 0 expected)
    soft    out(p) = sum_q w(q->p) e^{Z_q} I_q    / sum_q w(q->p) e^{Z_q}

``soft`` is the softmax splatting of Niklaus & Liu (CVPR 2020): where several source pixels
collide, the one with the larger ``Z`` (e.g. the better photometric match, i.e. the visible
one) wins smoothly. It is computed stably: before the exponential each contribution is shifted
by the largest ``Z`` among the contributions to the same output pixel (a per-output-pixel
max, found with ``scatter_reduce(amax)``). That leaves the ratio unchanged, keeps every
exponential <= 1 and the denominator >= the largest bilinear weight at that pixel, so it never
underflows whatever the range of ``Z``. The division is done only where the denominator is
positive; pixels that receive nothing are 0 (no epsilon, so results are exactly
shift-invariant in ``Z``). Contributions that land outside the frame, and those of pixels with a
non-finite flow or metric, are dropped. Contributions with an exactly zero bilinear weight are
ignored (they change no sum, and they do not take part in the per-pixel max).
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from vid2pair.core.device import resolve_device  # noqa: F401  (re-exported)
from vid2pair.core.items import PairItem

MODES = ("sum", "avg", "linear", "soft")

__all__ = [
    "MODES",
    "softmax_splat",
    "splat_with_density",
    "backwarp",
    "magicfixup_metric",
    "reference_splat_numpy",
    "resolve_device",
]


def _check(img, flow, metric, mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if img.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2:
        raise ValueError(
            f"expected img (B, C, H, W) and flow (B, 2, H, W), got {tuple(img.shape)} / {tuple(flow.shape)}"
        )
    if img.shape[0] != flow.shape[0] or img.shape[2:] != flow.shape[2:]:
        raise ValueError(f"img {tuple(img.shape)} and flow {tuple(flow.shape)} differ in batch or size")
    if mode in ("linear", "soft"):
        if metric is None:
            raise ValueError(f"mode {mode!r} needs a metric (B, 1, H, W)")
        if (
            metric.dim() != 4
            or metric.shape[1] != 1
            or metric.shape[0] != img.shape[0]
            or metric.shape[2:] != img.shape[2:]
        ):
            raise ValueError(f"metric must be (B, 1, H, W) matching img, got {tuple(metric.shape)}")


def _splat(img, flow, metric, mode: str, density: bool):
    """Core: returns (out (B, C, H, W), density (B, 1, H, W) or None).

    Contributions are scattered into a canvas padded by 2 px on the left/top and 3 px on the
    right/bottom: target points are clamped to [-2, size + 1], so every corner of every point
    falls inside the canvas and no per-corner bounds test is needed; the padding (which also
    receives all the weight of the points with a non-finite flow or metric, sent to (-2, -2))
    is cropped away at the end.
    """
    import torch

    _check(img, flow, metric, mode)
    b, c, h, w = img.shape
    dev = img.device
    dt = img.dtype if img.is_floating_point() else torch.float32
    if b * c * h * w == 0 or b * h * w == 0:
        out = torch.zeros((b, c, h, w), dtype=dt, device=dev)
        return out, (torch.zeros((b, 1, h, w), dtype=dt, device=dev) if density else None)
    flow = flow.to(device=dev, dtype=dt)
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w)
    x = (xs + flow[:, 0]).reshape(-1)
    y = (ys + flow[:, 1]).reshape(-1)
    bad = ~(torch.isfinite(x) & torch.isfinite(y))
    zf = None
    if mode in ("linear", "soft"):
        zf = metric.to(device=dev, dtype=dt).reshape(-1).clone()
        bad |= ~torch.isfinite(zf)
        zf.masked_fill_(bad, 0.0)
    x.masked_fill_(bad, -2.0).clamp_(-2.0, w + 1.0)
    y.masked_fill_(bad, -2.0).clamp_(-2.0, h + 1.0)
    x0f, y0f = torch.floor(x), torch.floor(y)
    fx, fy = x.sub_(x0f), y.sub_(y0f)  # in place: x, y now hold the fractional parts
    fx.masked_fill_(bad, 0.0)
    fy.masked_fill_(bad, 0.0)
    pw, ph = w + 5, h + 5  # padded canvas
    n = b * ph * pw
    i00 = y0f.add_(2.0).to(torch.int64).mul_(pw)
    i00 += x0f.add_(2.0).to(torch.int64)
    del x0f, y0f
    i00.view(b, h * w).add_((torch.arange(b, device=dev) * (ph * pw)).view(b, 1))
    offsets = (0, 1, pw, pw + 1)

    gx, gy = 1.0 - fx, 1.0 - fy
    # corner k: 0 = (x0, y0), 1 = (x0 + 1, y0), 2 = (x0, y0 + 1), 3 = (x0 + 1, y0 + 1); a bad point
    # (fx = fy = 0) puts weight 1 on its (-2, -2) corner, inside the padding, and 0 elsewhere
    factors = ((gx, gy), (fx, gy), (gx, fy), (fx, fy))

    def corner_weight(k: int, out):
        return torch.mul(factors[k][0], factors[k][1], out=out)

    idx = torch.empty_like(i00)
    wt = torch.empty_like(fx)
    if mode == "soft":
        zmax = torch.full((n,), float("-inf"), dtype=dt, device=dev)
        zsel = torch.empty_like(zf)
        for k in range(4):
            torch.add(i00, offsets[k], out=idx)
            corner_weight(k, wt)
            zsel.copy_(zf).masked_fill_(wt <= 0, float("-inf"))
            zmax.scatter_reduce_(0, idx, zsel, reduce="amax", include_self=True)

    vals = img.to(dt).reshape(b, c, h * w).transpose(0, 1).reshape(c, -1)  # (C, B*H*W)
    norm = mode != "sum"
    nk = c + int(norm) + int(density)
    acc = torch.zeros((nk, n), dtype=dt, device=dev)
    rows = torch.empty((nk, b * h * w), dtype=dt, device=dev)
    ww = rows[c] if norm else wt
    for k in range(4):
        torch.add(i00, offsets[k], out=idx)
        corner_weight(k, wt)
        if mode == "soft":
            # exponent <= 0 wherever wt > 0; where wt == 0 the (finite) value is multiplied by 0
            torch.index_select(zmax, 0, idx, out=ww)
            torch.sub(zf, ww, out=ww).clamp_(max=0.0).exp_().mul_(wt)
        elif mode == "linear":
            torch.mul(wt, zf, out=ww)
        elif norm:
            ww.copy_(wt)
        torch.mul(vals, ww, out=rows[:c])
        if density:
            rows[-1].copy_(wt)
        acc.index_add_(1, idx, rows)

    acc = acc.view(nk, b, ph, pw)[:, :, 2 : h + 2, 2 : w + 2]
    num = acc[:c]
    if norm:
        den = acc[c : c + 1]
        pos = den > 0
        num = torch.where(pos, num / torch.where(pos, den, 1.0), 0.0)
    out = num.transpose(0, 1).contiguous()
    dens = acc[-1:].transpose(0, 1).contiguous() if density else None
    return out, dens


def softmax_splat(img, flow, metric=None, mode: str = "soft"):
    """Forward-warp ``img`` (B, C, H, W) by ``flow`` (B, 2, H, W); see the module docstring.

    ``metric`` (B, 1, H, W) is required for ``linear`` and ``soft``. Integer images are
    converted to float32. Returns (B, C, H, W) on ``img``'s device.
    """
    return _splat(img, flow, metric, mode, density=False)[0]


def splat_with_density(img, flow, metric=None, mode: str = "soft"):
    """:func:`softmax_splat` plus the splatted density ``sum_q w(q->p)`` (B, 1, H, W) in the same pass.

    The density is the ``sum`` splat of a channel of ones: 1 inside a region that moved
    rigidly by any (even fractional) translation, below 1 where the motion stretches the
    content or nothing lands (disocclusions, the part of the frame the content left), above 1
    where content converges.
    """
    return _splat(img, flow, metric, mode, density=True)


def backwarp(img, flow, padding_mode: str = "border"):
    """Backward warp: ``out(p) = img(p + flow(p))``, bilinear (``grid_sample``, pixel centres at integers).

    ``img`` (B, C, H, W) float, ``flow`` (B, 2, H, W). ``padding_mode`` as in ``grid_sample``
    (``border`` | ``zeros`` | ``reflection``).
    """
    import torch
    import torch.nn.functional as F

    b, _, h, w = img.shape
    dev, dt = img.device, img.dtype
    flow = flow.to(device=dev, dtype=dt)
    xs = torch.arange(w, device=dev, dtype=dt).view(1, 1, w)
    ys = torch.arange(h, device=dev, dtype=dt).view(1, h, 1)
    gx = (xs + flow[:, 0]) * (2.0 / max(w - 1, 1)) - 1.0
    gy = (ys + flow[:, 1]) * (2.0 / max(h - 1, 1)) - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(img, grid, mode="bilinear", padding_mode=padding_mode, align_corners=True)


def magicfixup_metric(src, tgt, flow):
    """Magic Fixup's splatting metric ``clip(-20 * mean_c |src - backwarp(tgt, flow)|, -20, 20)``.

    ``src`` / ``tgt`` (B, 3, H, W) float in [0, 1], ``flow`` (B, 2, H, W) src -> tgt. A source
    pixel whose colour is found again at its flow target scores near 0 (visible in the target),
    an occluded one scores negative, so softmax splatting keeps the visible surface.
    """
    import torch

    err = (src - backwarp(tgt, flow)).abs().mean(dim=1, keepdim=True)
    return torch.clamp(-20.0 * err, -20.0, 20.0)


def reference_splat_numpy(
    img: np.ndarray, flow: np.ndarray, metric: Optional[np.ndarray] = None, mode: str = "soft"
) -> np.ndarray:
    """Per-pixel loop implementation of the same definition (float64; tests and benchmarks only).

    ``img`` (B, C, H, W), ``flow`` (B, 2, H, W), ``metric`` (B, 1, H, W). Target positions are
    computed in float32 like :func:`softmax_splat`, so both pick the same four neighbours.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    img = np.asarray(img, np.float64)
    flow = np.asarray(flow, np.float32)
    b, c, h, w = img.shape
    out = np.zeros((b, c, h, w))
    for bi in range(b):
        contrib: dict[tuple[int, int], list[tuple[float, float, int, int]]] = {}
        for y in range(h):
            for x in range(w):
                tx = np.float32(x) + flow[bi, 0, y, x]
                ty = np.float32(y) + flow[bi, 1, y, x]
                z = 0.0
                if mode in ("linear", "soft"):
                    z = float(metric[bi, 0, y, x])
                    if not np.isfinite(z):
                        continue
                if not (np.isfinite(tx) and np.isfinite(ty)):
                    continue
                x0, y0 = int(np.floor(tx)), int(np.floor(ty))
                ax, ay = float(tx) - x0, float(ty) - y0
                for dx, dy, wt in (
                    (0, 0, (1 - ax) * (1 - ay)),
                    (1, 0, ax * (1 - ay)),
                    (0, 1, (1 - ax) * ay),
                    (1, 1, ax * ay),
                ):
                    px, py = x0 + dx, y0 + dy
                    if 0 <= px < w and 0 <= py < h and wt > 0:
                        contrib.setdefault((py, px), []).append((wt, z, y, x))
        for (py, px), lst in contrib.items():
            zmax = max(z for _, z, _, _ in lst)
            num = np.zeros(c)
            den = 0.0
            for wt, z, y, x in lst:
                if mode == "soft":
                    k = wt * np.exp(z - zmax)
                elif mode == "linear":
                    k = wt * z
                else:
                    k = wt
                num += k * img[bi, :, y, x]
                den += k
            if mode == "sum":
                out[bi, :, py, px] = num
            elif den > 0:
                out[bi, :, py, px] = num / den
    return out


def check_pair_arrays(it: PairItem) -> Optional[tuple[str, str]]:
    """None when ``src`` / ``tgt`` / ``flow`` are usable, else (reason, detail): ``bad_input`` or ``invalid_flow``."""
    a = it.arrays
    if any(k not in a for k in ("src", "tgt", "flow")):
        return "bad_input", f"missing arrays: have {sorted(a)}"
    src, tgt, flow = (np.asarray(a[k]) for k in ("src", "tgt", "flow"))
    if src.ndim != 3 or src.shape[-1] != 3 or src.dtype != np.uint8 or tgt.shape != src.shape or tgt.dtype != np.uint8:
        return "bad_input", (
            f"src/tgt must be (H, W, 3) uint8 of one size, got {src.shape} {src.dtype} / {tgt.shape} {tgt.dtype}"
        )
    if min(src.shape[:2]) < 2:
        return "bad_input", f"frame too small: {src.shape[1]}x{src.shape[0]}"
    if flow.shape != src.shape[:2] + (2,):
        return "bad_input", f"flow shape {flow.shape} does not match the frame {src.shape[:2]}"
    if not np.issubdtype(flow.dtype, np.floating) or not np.isfinite(flow).all():
        return "invalid_flow", "flow has non-finite values" if np.issubdtype(
            flow.dtype, np.floating
        ) else f"flow dtype {flow.dtype} is not floating point"
    return None
