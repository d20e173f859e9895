"""Optical-flow backends behind one interface (pure core, no Ray), used by the flow and track stages.

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
from pathlib import Path
from typing import Literal, Mapping, Optional, Protocol, Sequence, Union, runtime_checkable

import cv2
import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.ops.flow_math import _accumulate, chain_indices, compose_flows, motion_stat
from vid2pair.ops.image import to_gray

BACKENDS = ("dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m", "sea_raft_l")

FlowBackendName = Literal["dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m", "sea_raft_l"]

DisPreset = Literal["ultrafast", "fast", "medium"]

SEA_RAFT_EXTRA_MESSAGE = "SEA-RAFT needs the optional extra: pip install 'vid2pair[sea-raft]'"


@runtime_checkable
class FlowBackend(Protocol):
    """Anything that maps two batches of RGB uint8 images to their forward flow."""

    name: str
    version: str

    def __call__(self, img1: np.ndarray, img2: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) x 2 uint8 RGB -> (B, H, W, 2) float32 flow from img1 to img2."""
        ...


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


def auto_finest_scale(height: int, width: int) -> int:
    """DIS finest pyramid level for chained hops: work at a short side of 240-480 px.

    The presets stop at level 1 (half size), which smears flow over object boundaries; on the
    240x320 synthetic clips level 0 cuts the moving points' median error from ~2 px to ~0.15 px.
    Larger frames keep the same effective working size (576 -> level 1, 1080 -> level 2).
    """
    return max(0, int(math.floor(math.log2(max(1, min(height, width)) / 240.0))))


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
            g1, g2 = to_gray(a[k]), to_gray(b[k])
            out[k] = self._dis.calc(g1, g2, None)
        return out[0] if single else out


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


def make_flow_backend(cfg) -> FlowBackend:
    """The backend a flow config (:class:`vid2pair.stages.flow.FlowConfig`) describes."""
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
