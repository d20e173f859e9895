"""Optical-flow stage: several backends behind one interface (pure core, no Ray).

Conventions
-----------
* Images are RGB ``uint8`` arrays, batched ``(B, H, W, 3)`` (a single ``(H, W, 3)`` pair is
  accepted too and gives a single ``(H, W, 2)`` flow).
* Flow is ``float32`` ``(B, H, W, 2)`` with ``flow[y, x] = (dx, dy)``: pixel ``(x, y)`` of the
  FIRST image moves to ``(x + dx, y + dy)`` in the SECOND image. Pixel ``(x, y)`` is column
  ``x``, row ``y``; integer coordinates are pixel centres (OpenCV convention). So the second
  image backward-warped by the flow, ``img2(x + flow(x))``, reproduces ``img1`` where the
  point is visible in both (:func:`warp_image`).
* Every backend has ``name`` and ``version`` strings (``version`` identifies library, model,
  weights and settings for provenance, e.g. ``"opencv-4.13.0/dis-medium"``).

Backends (:func:`make_flow_backend`)
------------------------------------
``dis``
    ``cv2.DISOpticalFlow`` on grayscale images. Weight-free, CPU, the default.
``raft_small`` / ``raft_large``
    ``torchvision.models.optical_flow``. Weights come from ``cfg.weights`` (a local
    checkpoint) or the model cache (:func:`pipeline.models.resolve_weights`), which raises
    ``MissingWeightsError`` naming the expected file and the fetch command. Inputs are
    normalised to ``[-1, 1]`` as torchvision's RAFT transforms do, padded (replicate,
    right/bottom) to multiples of 8 or resized to ``inference_size`` (rounded up to multiples
    of 8) with the flow resized back and its vectors rescaled. The last refinement is used.
``sea_raft_s`` / ``sea_raft_m`` / ``sea_raft_l``
    SEA-RAFT through the optional ``ptlflow`` package (``pip install 'vid2pair[sea-raft]'``).

Half precision (``fp16`` / ``bf16``) is applied through ``torch.autocast`` on CUDA only; on
CPU the models always run in fp32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import cv2
import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.core.items import Item, PairItem, pair_key
from vid2pair.core.spec import knob, need
from vid2pair.core.stage import Need, PairStage, Resources, Signal, pair_reject
from vid2pair.ops.draw import Panel, PanelView, flow_to_rgb

__all__ = [
    "FlowBackend",
    "DISFlow",
    "TorchvisionRAFT",
    "PtlflowSEARAFT",
    "make_flow_backend",
    "compose_flows",
    "chain_indices",
    "chain_flow",
    "flow_pair",
    "warp_image",
    "SEA_RAFT_EXTRA_MESSAGE",
    "BACKENDS",
]

BACKENDS = ("dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m", "sea_raft_l")
FlowBackendName = Literal["dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m", "sea_raft_l"]
DisPreset = Literal["ultrafast", "fast", "medium"]


@dataclass
class FlowConfig:
    """Optical flow source -> target (direct, chained over intermediate frames, or flow_advance)."""

    backend: FlowBackendName = knob(
        "dis", "dis (weight-free, CPU) | raft_small | raft_large | sea_raft_s | sea_raft_m | sea_raft_l"
    )
    dis_preset: DisPreset = knob("medium", "dis: OpenCV DIS preset")
    weights: Optional[str] = knob(None, "explicit local checkpoint; default: the model cache (vid2pair models fetch)")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N (model backends)")
    precision: Literal["fp32", "fp16", "bf16"] = knob("fp32", "half precision only on CUDA (autocast)")
    batch_size: int = knob(4, "pairs per flow-model call (and per actor batch in the Ray runner)", ge=1)
    iters: Optional[int] = knob(None, "RAFT refinement iterations (null: the model's default)", ge=1)
    inference_size: Optional[list[int]] = knob(
        None, "[H, W] the model runs at (multiples of 8); the flow is rescaled back", unit="px", items_ge=32
    )
    median_filter_px: Optional[int] = knob(
        None,
        "a median filter of this (odd) size on the final flow (and, with "
        "flow_advance, on each candidate's), used for the statistics and "
        "every signal (Magic Fixup: 15); null: off",
        unit="px",
        ge=3,
    )
    bidirectional: bool = knob(False, "also compute tgt -> src flow (flow_bwd.npy; better sketches)")
    chain: bool = knob(False, "chain flow over intermediate frames (forward, and backward for flow_bwd)")
    chain_mode: Literal["adaptive", "fixed"] = knob(
        "adaptive",
        "adaptive: hops planned from the motion (each covers about chain_step_px, as the flow_chain "
        "tracker's); fixed: chain_max_steps evenly spaced hops",
    )
    chain_max_steps: int = knob(
        8, "fixed chaining: hops between source and target; the frames decoded for adaptive chaining (+1)", ge=1
    )
    chain_step_px: float = knob(20.0, "adaptive chaining: motion covered by one hop", unit="px@dis", gt=0)
    chain_analysis_width: int = knob(
        160, "adaptive chaining: width of the motion profile that plans the hops", unit="px", ge=32
    )
    static_suppress: bool = knob(
        True,
        "zero the flow where source and target do not change (a static camera: "
        "what does not change does not move), keeping a narrow band of textured "
        "pixels around the change; flow noise and leaks on plain, still surfaces "
        "then put no drags, strokes or holes there",
    )
    rematch: bool = knob(
        True,
        "with static_suppress: a changed blob of the source that the flow lost (blur, a "
        "fast push, a moment hidden) is template-matched in the target, checked both ways, "
        "and given that move (stages/rematch.py); rotating, deforming or leaving objects "
        "keep their flow",
    )
    rematch_min_ncc: float = knob(0.8, "rematch: the normalised cross-correlation a match needs, both ways", ge=0, le=1)
    fb_mask: bool = knob(
        True,
        "with flow_bwd: mark forward-backward inconsistent pixels (occlusions, lost "
        "motion); the coarse edit does not splat them, drags are not sampled there and the "
        "sketch fills them from their surroundings",
    )
    num_gpus: float = knob(
        0.0,
        "GPUs per flow actor in the Ray runner (fractions share a GPU); ignored by dis, which never asks for a GPU",
        ge=0,
    )
    num_cpus: float = knob(0.25, "logical CPUs per flow actor (it shares cores with the clip workers)", gt=0)
    actors: int = knob(1, "flow actor-pool size in the Ray runner", ge=1)

    def check(self, prefix: str = "flow") -> None:
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"{prefix}.device",
            f"{self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )
        need(
            self.median_filter_px is None or self.median_filter_px % 2 == 1,
            f"{prefix}.median_filter_px",
            f"must be odd, got {self.median_filter_px}",
        )
        if self.inference_size is not None:
            need(
                len(self.inference_size) == 2 and all(s % 8 == 0 for s in self.inference_size),
                f"{prefix}.inference_size",
                "must be [H, W], multiples of 8",
            )


SEA_RAFT_EXTRA_MESSAGE = "SEA-RAFT needs the optional extra: pip install 'vid2pair[sea-raft]'"


@runtime_checkable
class FlowBackend(Protocol):
    """Anything that maps two batches of RGB uint8 images to their forward flow."""

    name: str
    version: str

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) x 2 uint8 RGB -> (B, H, W, 2) float32 flow from img1 to img2."""
        ...


# --------------------------------------------------------------------------------------
# helpers


def _as_batches(img1: np.ndarray, img2: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    a, b = np.asarray(img1), np.asarray(img2)
    if a.shape != b.shape:
        raise ValueError(f"flow inputs differ in shape: {a.shape} vs {b.shape}")
    single = a.ndim == 3
    if single:
        a, b = a[None], b[None]
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"flow inputs must be (B, H, W, 3) or (H, W, 3) RGB, got {a.shape}")
    if a.dtype != np.uint8 or b.dtype != np.uint8:
        raise ValueError(f"flow inputs must be uint8, got {a.dtype} / {b.dtype}")
    return a, b, single


def _pixel_grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    return xs, ys


def warp_image(img: np.ndarray, flow: np.ndarray, border: int = cv2.BORDER_REPLICATE) -> np.ndarray:
    """Backward-warp ``img`` (the SECOND image) by ``flow``: ``out[y, x] = img(x + dx, y + dy)``.

    Single ``(H, W, C)`` / ``(H, W, 2)`` or batched. Bilinear; the output has ``img``'s dtype.
    """
    img, flow = np.asarray(img), np.asarray(flow, np.float32)
    if flow.ndim == 4:
        return np.stack([warp_image(i, f, border) for i, f in zip(img, flow)])
    xs, ys = _pixel_grid(*flow.shape[:2])
    return cv2.remap(img, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR, borderMode=border)


def _compose_single(f01: np.ndarray, f12: np.ndarray) -> np.ndarray:
    h, w = f01.shape[:2]
    if f12.shape != f01.shape:
        raise ValueError(f"compose_flows: shapes differ {f01.shape} vs {f12.shape}")
    xs, ys = _pixel_grid(h, w)
    sampled = cv2.remap(f12, xs + f01[..., 0], ys + f01[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return f01 + sampled


def compose_flows(f01: np.ndarray, f12: np.ndarray) -> np.ndarray:
    """Compose two flows: ``F_02(x) = F_01(x) + F_12(x + F_01(x))``.

    ``F_12`` is sampled bilinearly (``cv2.remap``; OpenCV quantises the sub-pixel sampling
    position to 1/32 px, so the result is exact for piecewise-constant flows and within
    ``|grad F_12| / 32`` otherwise). Points that land outside the frame take the nearest
    border value of ``F_12``. Single ``(H, W, 2)`` or batched ``(B, H, W, 2)``; float32 out.
    """
    a, b = np.asarray(f01, np.float32), np.asarray(f12, np.float32)
    if a.ndim == 3:
        return _compose_single(a, b)
    if a.ndim != 4 or a.shape != b.shape:
        raise ValueError(f"compose_flows expects (H, W, 2) or (B, H, W, 2) pairs, got {a.shape} / {b.shape}")
    return np.stack([_compose_single(x, y) for x, y in zip(a, b)])


def chain_indices(n_frames: int, max_steps: Optional[int] = None) -> np.ndarray:
    """Frame indices used for chaining: all of them, or at most ``max_steps`` hops (first and last kept)."""
    if n_frames < 2:
        raise ValueError("chaining needs at least two frames")
    if max_steps is None or n_frames - 1 <= max_steps:
        return np.arange(n_frames)
    if max_steps < 1:
        raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    return np.unique(np.rint(np.linspace(0, n_frames - 1, max_steps + 1)).astype(int))


def _accumulate(hops: np.ndarray) -> np.ndarray:
    total = hops[0]
    for hop in hops[1:]:
        total = _compose_single(total, hop)
    return np.ascontiguousarray(total, dtype=np.float32)


def chain_flow(frames: np.ndarray, backend: FlowBackend, max_steps: Optional[int] = None) -> np.ndarray:
    """Flow from ``frames[0]`` to ``frames[-1]`` by composing flows between consecutive frames.

    ``frames`` (T, H, W, 3) are ordered from the first to the last frame; with ``max_steps``
    they are subsampled to at most that many hops (first and last kept). All hops go to the
    backend in one batched call. Returns (H, W, 2) float32.
    """
    frames = np.asarray(frames)
    idx = chain_indices(len(frames), max_steps)
    hops = backend(frames[idx[:-1]], frames[idx[1:]])
    return _accumulate(hops)


def flow_pair(
    backend: FlowBackend,
    src: np.ndarray,
    tgt: np.ndarray,
    bidirectional: bool = False,
    chain_frames: Optional[np.ndarray] = None,
    chain_max_steps: Optional[int] = None,
) -> dict:
    """Flow between one source and one target frame (each (H, W, 3) uint8 RGB).

    Returns ``{"fwd": (H, W, 2)}`` (src -> tgt) and, if ``bidirectional``, ``"bwd"`` (tgt -> src).
    With ``chain_frames`` ((T, H, W, 3), from src to tgt inclusive) the flows are chained over
    those frames (:func:`chain_flow`, at most ``chain_max_steps`` hops) instead of computed
    directly; ``src`` / ``tgt`` then only serve as a shape check. Forward and backward hops
    share one batched backend call.
    """
    src, tgt = np.asarray(src), np.asarray(tgt)
    if src.shape != tgt.shape or src.ndim != 3:
        raise ValueError(f"flow_pair expects two (H, W, 3) frames, got {src.shape} / {tgt.shape}")
    if chain_frames is None:
        if bidirectional:
            out = backend(np.stack([src, tgt]), np.stack([tgt, src]))
            return {"fwd": out[0], "bwd": out[1]}
        return {"fwd": backend(src[None], tgt[None])[0]}
    frames = np.asarray(chain_frames)
    if frames.shape[1:] != src.shape:
        raise ValueError(f"chain_frames {frames.shape} do not match the frame shape {src.shape}")
    idx = chain_indices(len(frames), chain_max_steps)
    a, b = frames[idx[:-1]], frames[idx[1:]]
    k = len(a)
    if bidirectional:
        hops = backend(np.concatenate([a, b]), np.concatenate([b, a]))
        # backward chain goes tgt -> src: reverse hop order
        return {"fwd": _accumulate(hops[:k]), "bwd": _accumulate(hops[k:][::-1])}
    return {"fwd": _accumulate(backend(a, b))}


# --------------------------------------------------------------------------------------
# chaining planned from the motion (shared with the flow_chain tracker)


def to_gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def auto_finest_scale(height: int, width: int) -> int:
    """DIS finest pyramid level for chained hops: work at a short side of 240-480 px.

    The presets stop at level 1 (half size), which smears flow over object boundaries; on the
    240x320 synthetic clips level 0 cuts the moving points' median error from ~2 px to ~0.15 px.
    Larger frames keep the same effective working size (576 -> level 1, 1080 -> level 2).
    """
    return max(0, int(math.floor(math.log2(max(1, min(height, width)) / 240.0))))


def motion_stat(flow: np.ndarray, min_px: float) -> float:
    """p90 magnitude of the pixels moving more than ``min_px`` (0 when fewer than 8 move)."""
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    moving = mag[mag > min_px]
    if moving.size < 8:
        return 0.0
    return float(np.percentile(moving, 90))


def invert_flow(f: np.ndarray, iters: int = 2) -> np.ndarray:
    """Approximate inverse ``b`` of a flow ``f`` (``b(y) = -f(y + b(y))``, fixed-point iterations)."""
    h, w = f.shape[:2]
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    b = -f
    for _ in range(iters):
        b = -cv2.remap(f, xs + b[..., 0], ys + b[..., 1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return b


def dis_calc(dis, a: np.ndarray, b: np.ndarray, init: Optional[np.ndarray] = None) -> np.ndarray:
    """DIS flow of grey frames ``a`` -> ``b``; ``init`` (same size, CV_32FC2) is its initial flow."""
    if init is None:
        return dis.calc(a, b, None)
    return dis.calc(a, b, np.ascontiguousarray(init, np.float32))


def plan_hops(
    gray: Sequence[np.ndarray], step_px: float, analysis_width: int, profile_dis, init: bool = True
) -> tuple[list[tuple[int, int]], list[Optional[np.ndarray]], np.ndarray]:
    """Hops ``[(i, j), ...]`` covering frames 0..T-1 so that each moves the moving pixels by about
    ``step_px`` (stored px), their initial flows (full size, from the composed profile; None when
    ``init`` is off) and the per-step motion profile (T-1,) in stored px.

    The profile is DIS (``profile_dis``, finest level 0) between consecutive frames resized to
    ``analysis_width``; a hop from frame ``i`` grows while the profile flows composed over it move
    the moving pixels (p90 of those above 1 px) by at most ``step_px``."""
    t = len(gray)
    h, w = gray[0].shape
    if t == 2:
        return [(0, 1)], [None], np.zeros(1)
    s = min(1.0, analysis_width / float(w))
    if s < 1.0:
        size = (max(16, int(round(w * s))), max(16, int(round(h * s))))
        small = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
        s = size[0] / float(w)
    else:
        small = list(gray)
    flows = [dis_calc(profile_dis, small[k], small[k + 1]) for k in range(t - 1)]
    profile = np.array([motion_stat(f, 0.5 * s) / s for f in flows])
    hops, accs, i, acc = [], [], 0, None
    for k in range(t - 1):
        nxt = flows[k] if acc is None else compose_flows(acc, flows[k])
        if acc is not None and motion_stat(nxt, s) / s > step_px:
            hops.append((i, k))
            accs.append(acc)
            i, nxt = k, flows[k]
        acc = nxt
    hops.append((i, t - 1))
    accs.append(acc)
    inits: list[Optional[np.ndarray]] = []
    for acc in accs:
        inits.append(cv2.resize(acc, (w, h), interpolation=cv2.INTER_LINEAR) / s if init else None)
    return hops, inits, profile


# --------------------------------------------------------------------------------------
# DIS


DIS_PRESETS = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}


class DISFlow:
    """OpenCV Dense Inverse Search flow on grayscale images (weight-free)."""

    def __init__(self, preset: str = "medium") -> None:
        if preset not in DIS_PRESETS:
            raise ValueError(f"dis_preset must be one of {sorted(DIS_PRESETS)}, got {preset!r}")
        self.preset = preset
        self.name = "dis"
        self.version = f"opencv-{cv2.__version__}/dis-{preset}"
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[preset])

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        a, b, single = _as_batches(img1, img2)
        out = np.empty(a.shape[:3] + (2,), np.float32)
        for k in range(len(a)):
            g1 = cv2.cvtColor(np.ascontiguousarray(a[k]), cv2.COLOR_RGB2GRAY)
            g2 = cv2.cvtColor(np.ascontiguousarray(b[k]), cv2.COLOR_RGB2GRAY)
            out[k] = self._dis.calc(g1, g2, None)
        return out[0] if single else out


# --------------------------------------------------------------------------------------
# torch models


def _resolve_checkpoint(name: str, weights: Optional[Union[str, Path]]) -> Path:
    """An explicit existing file is used as is; everything else goes through the model cache."""
    if weights is not None and Path(weights).is_file():
        return Path(weights)
    from vid2pair.core.weights import resolve_weights

    # raises MissingWeightsError naming the expected file and the fetch command
    return Path(resolve_weights(name, explicit=weights, config_key="flow.weights"))


def _round8(x: int) -> int:
    return max(8, int(-(-int(x) // 8) * 8))


class _TorchFlowModel:
    """Shared batching / resizing / padding / precision logic for torch flow models.

    Subclasses implement ``_forward(img1, img2) -> (B, 2, h, w)`` on float tensors
    ``(B, 3, h, w)`` holding RGB values in ``[0, 255]``, with ``h, w`` multiples of 8.
    """

    name: str = "torch"
    version: str = ""
    min_side: int = 128  # RAFT-style correlation pyramids need feature maps >= 16 px at stride 8

    def __init__(
        self,
        *,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 4,
        iters: Optional[int] = None,
        inference_size: Optional[Sequence[int]] = None,
    ) -> None:
        if precision not in ("fp32", "fp16", "bf16"):
            raise ValueError(f"precision must be fp32, fp16 or bf16, got {precision!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if inference_size is not None:
            if len(inference_size) != 2 or min(inference_size) < 8:
                raise ValueError(f"inference_size must be [H, W] (>= 8 each), got {inference_size}")
            inference_size = (_round8(inference_size[0]), _round8(inference_size[1]))
        self.device = resolve_device(device)
        self.precision = precision
        self.batch_size = int(batch_size)
        self.iters = iters
        self.inference_size = inference_size

    def _autocast(self):
        import torch

        if self.device.type == "cuda" and self.precision != "fp32":
            dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
            return torch.autocast("cuda", dtype=dtype)
        return contextlib.nullcontext()

    def _forward(self, img1, img2):  # pragma: no cover - abstract
        raise NotImplementedError

    def _run(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        h0, w0 = a.shape[1:3]
        # contiguous NCHW: a permuted (channels-last) batch makes ptlflow's SEA-RAFT padding fail for B > 1
        t1 = torch.from_numpy(np.array(a, order="C")).to(self.device).permute(0, 3, 1, 2).float().contiguous()
        t2 = torch.from_numpy(np.array(b, order="C")).to(self.device).permute(0, 3, 1, 2).float().contiguous()
        resized = self.inference_size is not None and tuple(self.inference_size) != (h0, w0)
        if resized:
            h, w = self.inference_size
            anti = h < h0 or w < w0
            t1 = F.interpolate(t1, size=(h, w), mode="bilinear", align_corners=False, antialias=anti)
            t2 = F.interpolate(t2, size=(h, w), mode="bilinear", align_corners=False, antialias=anti)
        else:
            h, w = h0, w0
        # pad right / bottom (pixel coordinates unchanged) to multiples of 8 and the model minimum
        ph, pw = max(self.min_side, _round8(h)), max(self.min_side, _round8(w))
        if (ph, pw) != (h, w):
            pad = (0, pw - w, 0, ph - h)
            t1 = F.pad(t1, pad, mode="replicate")
            t2 = F.pad(t2, pad, mode="replicate")
        with torch.inference_mode(), self._autocast():
            flow = self._forward(t1, t2)
        flow = flow.float()[:, :, :h, :w]
        if resized:
            flow = F.interpolate(flow, size=(h0, w0), mode="bilinear", align_corners=False)
            scale = torch.tensor([w0 / w, h0 / h], device=flow.device, dtype=flow.dtype).view(1, 2, 1, 1)
            flow = flow * scale
        return flow.permute(0, 2, 3, 1).contiguous().cpu().numpy().astype(np.float32, copy=False)

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        a, b, single = _as_batches(img1, img2)
        out = np.empty(a.shape[:3] + (2,), np.float32)
        for s in range(0, len(a), self.batch_size):
            out[s : s + self.batch_size] = self._run(a[s : s + self.batch_size], b[s : s + self.batch_size])
        return out[0] if single else out

    def _settings_tag(self) -> str:
        tag = f"iters{self.iters}" if self.iters is not None else "iters-default"
        if self.inference_size is not None:
            tag += f"@{self.inference_size[0]}x{self.inference_size[1]}"
        return tag


class TorchvisionRAFT(_TorchFlowModel):
    """RAFT from ``torchvision.models.optical_flow`` (``variant`` "small" or "large").

    ``weights``: a local checkpoint (a plain state dict, as torchvision publishes them; a
    ``{"state_dict": ...}`` wrapper and ``module.`` prefixes are accepted). ``None`` looks the
    file up in the model cache. ``random_init=True`` keeps random weights: tests only.
    """

    def __init__(
        self,
        variant: str = "small",
        weights: Optional[Union[str, Path]] = None,
        *,
        random_init: bool = False,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 4,
        iters: Optional[int] = None,
        inference_size: Optional[Sequence[int]] = None,
    ) -> None:
        import torch
        import torchvision
        from torchvision.models import optical_flow

        if variant not in ("small", "large"):
            raise ValueError(f"RAFT variant must be 'small' or 'large', got {variant!r}")
        super().__init__(
            device=device, precision=precision, batch_size=batch_size, iters=iters, inference_size=inference_size
        )
        self.name = f"raft_{variant}"
        builder = optical_flow.raft_small if variant == "small" else optical_flow.raft_large
        model = builder(weights=None, progress=False)
        if random_init:
            tag = "random-init"
        else:
            path = _resolve_checkpoint(self.name, weights)
            state = torch.load(str(path), map_location=self.device, weights_only=True)
            if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
                state = state["state_dict"]
            state = {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}
            model.load_state_dict(state)
            tag = path.stem
        self.model = model.to(self.device).eval()
        self.weights_tag = tag
        self.version = f"torchvision-{torchvision.__version__}/{self.name}-{tag}/{self._settings_tag()}"

    def _forward(self, img1, img2):
        # torchvision's Raft transforms: uint8 -> float [0, 1] -> Normalize(0.5, 0.5) == [-1, 1]
        x1 = img1 / 127.5 - 1.0
        x2 = img2 / 127.5 - 1.0
        preds = self.model(x1, x2, num_flow_updates=self.iters if self.iters is not None else 12)
        return preds[-1]


class PtlflowSEARAFT(_TorchFlowModel):
    """SEA-RAFT (``variant`` "s", "m" or "l") through the optional ``ptlflow`` package.

    What ptlflow (>= 0.4) expects, from its sources and ``infer.py``:

    * ``ptlflow.get_model(name, ckpt_path=...)`` builds a registered model ("sea_raft_s",
      "sea_raft_m", "sea_raft_l") and loads a checkpoint; ``ckpt_path`` is either a name from
      the model's ``pretrained_checkpoints`` (downloaded) or a local file. We only pass local
      files (resolved through the model cache) so nothing is downloaded implicitly.
    * ``model({"images": x})`` with ``x`` float ``(B, 2, 3, H, W)`` in ``[0, 1]`` and **BGR**
      channel order (ptlflow reads images with ``cv2.imread``; SEA-RAFT's forward calls
      ``preprocess_images(..., bgr_to_rgb=True)`` and rescales to ``[-1, 1]`` itself; it pads
      internally to its stride and un-pads the output).
    * The output dict holds ``"flows"``: ``(B, 1, 2, H, W)`` at the input resolution, (dx, dy)
      with the same forward convention as ours.
    * The number of refinement iterations is the model attribute ``iters`` (S/M: 4, L: 12).
    """

    def __init__(
        self,
        variant: str = "m",
        weights: Optional[Union[str, Path]] = None,
        *,
        device: str = "auto",
        precision: str = "fp32",
        batch_size: int = 4,
        iters: Optional[int] = None,
        inference_size: Optional[Sequence[int]] = None,
    ) -> None:
        if variant not in ("s", "m", "l"):
            raise ValueError(f"SEA-RAFT variant must be 's', 'm' or 'l', got {variant!r}")
        try:
            import ptlflow
        except ImportError:
            raise ImportError(SEA_RAFT_EXTRA_MESSAGE) from None
        super().__init__(
            device=device, precision=precision, batch_size=batch_size, iters=iters, inference_size=inference_size
        )
        self.name = f"sea_raft_{variant}"
        path = _resolve_checkpoint(self.name, weights)
        model = ptlflow.get_model(self.name, ckpt_path=str(path))
        if iters is not None:
            model.iters = int(iters)
        self.model = model.to(self.device).eval()
        self.weights_tag = path.stem
        version = getattr(ptlflow, "__version__", "unknown")
        self.version = f"ptlflow-{version}/{self.name}-{path.stem}/{self._settings_tag()}"

    def _forward(self, img1, img2):
        import torch

        x = torch.stack([img1, img2], dim=1)[:, :, [2, 1, 0]] / 255.0  # RGB -> BGR, [0, 1]
        out = self.model({"images": x})
        return out["flows"][:, 0]


# --------------------------------------------------------------------------------------
# factory


def median_filter_flow(flow: np.ndarray, size: Optional[int]) -> np.ndarray:
    """Each flow channel median-filtered over ``size`` x ``size`` pixels (None: unchanged)."""
    if not size:
        return flow
    from scipy.ndimage import median_filter

    return np.stack([median_filter(flow[..., k], size=int(size), mode="nearest") for k in range(2)], axis=-1).astype(
        np.float32
    )


def make_flow_backend(cfg: FlowConfig) -> FlowBackend:
    """The backend a :class:`FlowConfig` describes."""
    common = dict(
        device=cfg.device,
        precision=cfg.precision,
        batch_size=cfg.batch_size,
        iters=cfg.iters,
        inference_size=cfg.inference_size,
    )
    if cfg.backend == "dis":
        return DISFlow(cfg.dis_preset)
    if cfg.backend in ("raft_small", "raft_large"):
        return TorchvisionRAFT(cfg.backend.split("_")[1], cfg.weights, **common)
    if cfg.backend in ("sea_raft_s", "sea_raft_m", "sea_raft_l"):
        return PtlflowSEARAFT(cfg.backend[-1], cfg.weights, **common)
    raise ValueError(f"unknown flow backend {cfg.backend!r}; choose one of {', '.join(BACKENDS)}")


# --------------------------------------------------------------------------------------
# the stage


def judge_dense_flow(name: str, p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The dense flow's rules as a signal (``name``: ``flow`` or ``flow_bwd``; its
    :attr:`~vid2pair.core.stage.Signal.judge`): the quality stage's flow rules found it
    inconsistent or not explaining the change (``p.flow_verdict``); the signals made from it keep
    what of it holds, each judged by its own rules."""
    if p.flow_verdict is not None:
        sig_fail.setdefault(name, p.flow_verdict)


def draw_flow(v: PanelView) -> list[Panel]:
    """The flow's QC panel (its :attr:`~vid2pair.core.stage.Signal.draw`): the flow src -> tgt in colours."""
    flow = v.sample.array("flow")
    if flow is not None and flow.ndim == 3 and flow.shape[2] == 2:
        p90 = ((v.meta.get("flow") or {}).get("stats") or {}).get("p90")
        label = "flow src→tgt" + (f" (p90 {p90:.1f} px)" if p90 is not None else "")
        return [Panel("flow", label, v.disp(flow_to_rgb(flow)))]
    return [v.missing("flow", "flow src→tgt", "flow.npy", "flow")]


def _advance(it: PairItem) -> bool:
    """Is the pair's target still to be chosen by Magic Fixup's advance rule (the clip stage made it
    under ``pairs.policy: flow_advance``, with the candidate targets as its frames)?"""
    return it.meta.get("policy") == "flow_advance"


class FlowStage(PairStage):
    """Optical flow src -> tgt for a batch of pairs (a model stage: one backend per worker / actor).

    Reads ``arrays["frames"]`` (src, intermediate frames, tgt); writes ``src``, ``tgt``, ``flow``
    (and ``flow_bwd``, ``flow_valid``, ``flow_bwd_valid``) and ``meta["flow"]``; keeps ``frames``,
    and gives the re-matched pieces (``rematched``, ``rematched_src``), when a stage after it reads
    them. For a pair of ``pairs.policy: flow_advance`` (its ``meta["policy"]``) it also chooses the
    target (Magic Fixup's advance rule)."""

    name = "flow"
    sections = {"flow": FlowConfig}
    reads = ("frames",)
    provides = (
        "src",
        "tgt",
        "flow",
        "flow_bwd",
        "flow_valid",
        "flow_bwd_valid",
        "frames",
        "rematched",
        "rematched_src",
    )
    # flow.npy / flow_bwd.npy are written by the encoder from arrays["flow"] / ["flow_bwd"]
    signals = (
        Signal(
            "flow",
            ("flow.npy",),
            "output.flow",
            judge=partial(judge_dense_flow, "flow"),
            panels=("flow",),
            draw=draw_flow,
        ),
        Signal("flow_bwd", ("flow_bwd.npy",), "flow.bidirectional", judge=partial(judge_dense_flow, "flow_bwd")),
    )

    @classmethod
    def frames_read(cls, cfg) -> int:
        return cfg.flow.chain_max_steps + 1 if cfg.flow.chain else 2

    @classmethod
    def resources(cls, cfg) -> Optional[Resources]:
        fl = cfg.flow
        if fl.backend == "dis":
            return None  # weight-free CPU flow: no model to hold, never a GPU; runs with the light stages
        return Resources(
            actors=fl.actors,
            num_gpus=fl.num_gpus,
            num_cpus=fl.num_cpus,
            batch_size=fl.batch_size,
            gpu_key="flow.num_gpus",
        )

    @classmethod
    def needs(cls, cfg) -> list[Need]:
        fl = cfg.flow
        if fl.backend == "dis":
            return []
        out = [Need("weights", fl.backend, f"flow.backend={fl.backend}", path=fl.weights, path_key="flow.weights")]
        if fl.backend.startswith("sea_raft"):
            out.append(Need("extra", "ptlflow", f"flow.backend={fl.backend}", extra="sea-raft"))
        return out

    def __init__(self, cfg):
        super().__init__(cfg)
        self._backend = None
        self._hop_dis = None
        self._profile_dis = None

    @property
    def backend(self):
        if self._backend is None:
            self._backend = make_flow_backend(self.cfg.flow)
        return self._backend

    def process(self, items: list[PairItem]) -> list[Item]:
        try:
            be = self.backend
        except Exception as e:  # missing weights / extra: every pair is recorded, the message says why
            return [pair_reject(it, "flow", "flow_backend_unavailable", str(e)[:500]) for it in items]
        res = {}
        direct = [it for it in items if not self._needs_sequence(it)]
        bs = self.cfg.flow.batch_size
        for k in range(0, len(direct), bs):  # direct src->tgt flow, batched across pairs
            chunk = direct[k : k + bs]
            try:
                src = np.stack([it.arrays["frames"][0] for it in chunk])
                tgt = np.stack([it.arrays["frames"][-1] for it in chunk])
                fwd = be(src, tgt)
                bwd = be(tgt, src) if self.cfg.flow.bidirectional else None
                for j, it in enumerate(chunk):
                    res[id(it)] = self._finish(it, fwd[j], None if bwd is None else bwd[j])
            except Exception as e:
                for it in chunk:
                    res[id(it)] = pair_reject(it, "flow", "flow_failed", f"{type(e).__name__}: {e}"[:500])
        out: list[Item] = []
        for it in items:
            if id(it) not in res:
                try:
                    res[id(it)] = self._sequence(it)
                except Exception as e:
                    res[id(it)] = pair_reject(it, "flow", "flow_failed", f"{type(e).__name__}: {e}"[:500])
            out.append(res[id(it)])
        return out

    def _needs_sequence(self, it: PairItem) -> bool:
        return it.arrays["frames"].shape[0] > 2 and (self.cfg.flow.chain or _advance(it))

    def _adaptive_chain(self, fr: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], list]:
        """Forward (and, with ``flow.bidirectional``, backward) flow chained over hops planned from the
        motion (:func:`plan_hops`), as the flow_chain tracker does. DIS hops run at the finest pyramid
        level that keeps a 240-480 px working size and start from the planned initial flow; a model
        backend computes the hops itself (batched)."""
        fl = self.cfg.flow
        gray = [to_gray(f) for f in fr]
        h, w = gray[0].shape
        fs = auto_finest_scale(h, w)
        if self._profile_dis is None:
            self._profile_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[fl.dis_preset])
            self._profile_dis.setFinestScale(0)
            self._hop_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[fl.dis_preset])
        hops, inits, _ = plan_hops(gray, fl.chain_step_px * 2**fs, fl.chain_analysis_width, self._profile_dis)
        if fl.backend == "dis":
            self._hop_dis.setFinestScale(int(fs))
            fwd = [dis_calc(self._hop_dis, gray[i], gray[j], init) for (i, j), init in zip(hops, inits)]
            bwd = (
                [dis_calc(self._hop_dis, gray[j], gray[i], invert_flow(f)) for (i, j), f in zip(hops, fwd)]
                if fl.bidirectional
                else None
            )
        else:
            a, b = [i for i, _ in hops], [j for _, j in hops]
            fwd = list(self.backend(fr[a], fr[b]))
            bwd = list(self.backend(fr[b], fr[a])) if fl.bidirectional else None
        f = fwd[0]
        for hop in fwd[1:]:
            f = compose_flows(f, hop)
        bk = None
        if bwd is not None:
            bk = bwd[-1]
            for hop in reversed(bwd[:-1]):
                bk = compose_flows(bk, hop)
        return f, bk, [[int(i), int(j)] for i, j in hops]

    def _sequence(self, it: PairItem) -> Item:
        """Chained flow over intermediate frames, or the flow_advance target search."""
        from vid2pair.stages.motion import flow_stats
        from vid2pair.stages.pairs import advance_select

        fr = it.arrays["frames"]
        advance = _advance(it)
        if not advance and self.cfg.flow.chain_mode == "adaptive":
            flow, bwd, hops = self._adaptive_chain(fr)
            it.meta["flow_hops"] = hops
            return self._finish(it, flow, bwd)
        sel = np.arange(len(fr)) if advance else chain_indices(len(fr), self.cfg.flow.chain_max_steps)
        hops = self.backend(fr[sel[:-1]], fr[sel[1:]])  # consecutive hops, batched
        acc = [hops[0]]
        for h in hops[1:]:
            acc.append(compose_flows(acc[-1], h))
        if advance:
            acc = [median_filter_flow(f, self.cfg.flow.median_filter_px) for f in acc]
            st = [flow_stats(f, 1.0, 1e9) for f in acc]
            k, why = advance_select([s["p90"] for s in st], [s["p95"] for s in st], it.meta.pop("advance_rule"))
            if k is None:
                return pair_reject(it, "pairs", "advance_rejected", why)
            tgt_frame = it.meta["frame_indices"][k + 1]
            fps = it.meta["fps"]
            it.meta.update(
                tgt_frame=tgt_frame,
                tgt_time=round(tgt_frame / fps, 6),
                dt=round(abs(tgt_frame - it.meta["src_frame"]) / fps, 6),
                advance_steps=k + 1,
                frame_indices=it.meta["frame_indices"][: k + 2],
            )
            it.key = pair_key(it.clip_id, it.meta["shot"], it.meta["src_frame"], tgt_frame)
            it.arrays["frames"] = fr[: k + 2]
            flow = acc[k]
        else:
            flow = acc[-1]
        fr = it.arrays["frames"]
        bwd = self.backend(fr[-1][None], fr[0][None])[0] if self.cfg.flow.bidirectional else None
        return self._finish(it, flow, bwd)

    def _finish(self, it: PairItem, flow, bwd) -> PairItem:
        from vid2pair.stages.evidence import fb_consistent, still_support

        fl = self.cfg.flow
        fr = it.arrays.pop("frames")
        it.meta.pop("advance_rule", None)  # (a sequence too short to advance)
        src, tgt = fr[0], fr[-1]
        flow = flow.astype(np.float32)
        bwd = None if bwd is None else bwd.astype(np.float32)
        if fl.median_filter_px and not _advance(it):  # (advance: filtered already)
            flow = median_filter_flow(flow, fl.median_filter_px)
            bwd = None if bwd is None else median_filter_flow(bwd, fl.median_filter_px)
        elif fl.median_filter_px and bwd is not None:
            bwd = median_filter_flow(bwd, fl.median_filter_px)
        info = {
            "backend": fl.backend,
            "version": getattr(self.backend, "version", ""),
            "chained": bool(fl.chain),
            "direction": "src->tgt",
            "bidirectional": bwd is not None,
        }
        if fl.chain:
            info["chain_mode"] = "advance" if _advance(it) else fl.chain_mode
        if "flow_hops" in it.meta:
            info["hops"] = it.meta.pop("flow_hops")
        if fl.static_suppress and np.isfinite(flow).all():
            # with a static camera, what does not change does not move: zero the flow there
            s = min(src.shape[:2]) / 512.0
            moving = still_support(src, tgt)
            flow[~moving] = 0.0
            if bwd is not None:
                bwd[~moving] = 0.0
            info["static_suppressed_frac"] = round(float((~moving).mean()), 4)
            if fl.rematch:
                from vid2pair.stages.rematch import rematch_objects

                flow, bwd, done, pieces, rec = rematch_objects(
                    src, tgt, flow, bwd, sigma=1.5 * s, close_px=max(1, round(6 * s)), min_ncc=fl.rematch_min_ncc
                )
                if rec:
                    info["rematched"] = rec
                    if self.wants("rematched"):
                        it.arrays["rematched"] = done  # target pixels whose source the tracker takes from flow_bwd
                    if self.wants("rematched_src"):
                        it.arrays["rematched_src"] = pieces  # the collage cuts its segments along them
        it.arrays.update(src=src, tgt=tgt, flow=flow)
        if self.wants("frames"):
            it.arrays["frames"] = fr  # the tracker needs the frames in between (it drops them)
        if bwd is not None:
            it.arrays["flow_bwd"] = bwd
            if fl.fb_mask and np.isfinite(flow).all() and np.isfinite(bwd).all():
                vf, vb = fb_consistent(flow, bwd), fb_consistent(bwd, flow)
                it.arrays["flow_valid"], it.arrays["flow_bwd_valid"] = vf, vb
                info["fb_valid_frac"] = round(float(vf.mean()), 4)
        it.meta["flow"] = info
        return it
