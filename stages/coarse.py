"""Coarse edit (Magic Fixup): the source frame forward-warped to the target layout.

Magic Fixup trains on (coarse edit, source, target) triplets: the *coarse edit* is the source
frame softmax-splatted along the src -> tgt flow, so it has the target's layout with the
source's appearance, plus holes where nothing landed (disocclusions, content that entered the
frame). Here:

* splat metric (``soft`` / ``linear``): :func:`stages.splat.magicfixup_metric`, i.e.
  ``clip(-20 * mean_c |src - backwarp(tgt, flow)|, -20, 20)`` on images in [0, 1]; where two
  source pixels collide, the one whose colour is found again in the target (the visible one)
  wins. ``linear`` uses ``max(1 + Z / 20, 1e-3)`` (the metric mapped to (0, 1]) as its
  positive weight; ``avg`` / ``sum`` use no metric.
* holes: a channel of ones is ``sum``-splatted in the same pass; its value (the splatted
  bilinear density) is 1 wherever content landed rigidly, and the pixel is a hole when it is
  <= ``hole_thresh`` (0.5). Hole pixels are black in the coarse image and 255 in the mask.
* coverage = 1 - hole fraction. Magic Fixup drops pairs whose coverage is below 0.6
  (``coarse.min_coverage``; ``null`` disables the rule); such pairs are recorded as rejects
  (stage ``coarse``, reason ``low_coverage``).

:class:`CoarseStage` batches the splat over pairs of equal size (``coarse.batch_size``) on
``coarse.device`` (``cpu`` | ``cuda`` | ``auto``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from vid2pair.core.items import Item, PairItem
from vid2pair.stages.base import PairStage, pair_reject
from vid2pair.stages.splat import MODES

__all__ = ["CoarseConfig", "coarse_edit", "coarse_edit_batch", "CoarseStage", "check_pair_arrays"]


@dataclass
class CoarseConfig:
    enabled: bool = True  # coarse.png + coarse_mask.png
    mode: str = "soft"  # sum | avg | linear | soft (splatting mode)
    min_coverage: Optional[float] = 0.6  # reject pairs whose non-hole fraction is below this; null: keep all
    hole_thresh: float = 0.5  # a pixel is a hole when its splatted density is <= this
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    batch_size: int = 8  # pairs of equal size splatted together

    def validate(self, prefix: str = "coarse") -> None:
        from vid2pair.pipeline.config import ConfigError

        if self.mode not in MODES:
            raise ConfigError(f"{prefix}.mode: {self.mode!r} is not one of {sorted(MODES)}")
        if self.min_coverage is not None and not 0.0 <= self.min_coverage <= 1.0:
            raise ConfigError(f"{prefix}.min_coverage: must be in [0, 1] or null, got {self.min_coverage}")
        if not 0.0 <= self.hole_thresh < 1.0:
            raise ConfigError(f"{prefix}.hole_thresh: must be in [0, 1), got {self.hole_thresh}")
        if self.device not in ("cpu", "cuda", "auto") and not (
                self.device.startswith("cuda:") and self.device[5:].isdigit()):
            raise ConfigError(f"{prefix}.device: must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}")
        if self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size: must be >= 1, got {self.batch_size}")


def _to_tensor_images(a: np.ndarray, dev):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(dev).permute(0, 3, 1, 2).float().div_(255.0)


def coarse_edit_batch(src: np.ndarray, flow: np.ndarray, mode: str = "soft", *, tgt: Optional[np.ndarray] = None,
                      hole_thresh: float = 0.5, device: str = "cpu"):
    """Batched :func:`coarse_edit`: ``src`` / ``tgt`` (B, H, W, 3) uint8, ``flow`` (B, H, W, 2) src -> tgt.

    Returns ``(coarse (B, H, W, 3) uint8, hole_mask (B, H, W) uint8 (255 = hole), coverage (B,) float64)``.
    """
    import torch

    from vid2pair.stages.splat import magicfixup_metric, resolve_device, splat_with_density

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    src, flow = np.asarray(src), np.asarray(flow, np.float32)
    if src.ndim != 4 or src.shape[-1] != 3 or flow.shape != src.shape[:3] + (2,):
        raise ValueError(f"coarse_edit expects src (B, H, W, 3) and flow (B, H, W, 2), got {src.shape} / {flow.shape}")
    dev = resolve_device(device)
    with torch.inference_mode():
        s = _to_tensor_images(src, dev)
        f = torch.from_numpy(np.ascontiguousarray(flow)).to(dev).permute(0, 3, 1, 2)
        metric = None
        if mode in ("soft", "linear"):
            if tgt is None:
                raise ValueError(f"mode {mode!r} needs tgt for the Magic Fixup metric")
            tgt = np.asarray(tgt)
            if tgt.shape != src.shape:
                raise ValueError(f"tgt {tgt.shape} differs from src {src.shape}")
            metric = magicfixup_metric(s, _to_tensor_images(tgt, dev), f)
            if mode == "linear":
                metric = (1.0 + metric / 20.0).clamp_(min=1e-3)
        out, dens = splat_with_density(s, f, metric, mode)
        holes = dens[:, 0] <= hole_thresh
        img = out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        img = img.masked_fill(holes[..., None], 0)
        coverage = 1.0 - holes.flatten(1).float().mean(dim=1) if holes[0].numel() else torch.zeros(len(src))
        return (img.cpu().numpy(), holes.to(torch.uint8).mul_(255).cpu().numpy(),
                coverage.double().cpu().numpy())


def coarse_edit(src: np.ndarray, flow: np.ndarray, mode: str = "soft", *, tgt: Optional[np.ndarray] = None,
                hole_thresh: float = 0.5, device: str = "cpu") -> tuple[np.ndarray, np.ndarray, float]:
    """Splat ``src`` (H, W, 3) uint8 along ``flow`` (H, W, 2, src -> tgt) to the target layout.

    ``tgt`` (H, W, 3) uint8 is needed by ``soft`` / ``linear`` (the Magic Fixup metric). Returns
    ``(coarse (H, W, 3) uint8, hole_mask (H, W) uint8 255 = hole, coverage float)``.
    """
    img, holes, cov = coarse_edit_batch(np.asarray(src)[None], np.asarray(flow)[None], mode,
                                        tgt=None if tgt is None else np.asarray(tgt)[None],
                                        hole_thresh=hole_thresh, device=device)
    return img[0], holes[0], float(cov[0])


def check_pair_arrays(it: PairItem) -> Optional[tuple[str, str]]:
    """None when ``src`` / ``tgt`` / ``flow`` are usable, else (reason, detail): ``bad_input`` or ``invalid_flow``."""
    a = it.arrays
    if any(k not in a for k in ("src", "tgt", "flow")):
        return "bad_input", f"missing arrays: have {sorted(a)}"
    src, tgt, flow = (np.asarray(a[k]) for k in ("src", "tgt", "flow"))
    if src.ndim != 3 or src.shape[-1] != 3 or src.dtype != np.uint8 or tgt.shape != src.shape \
            or tgt.dtype != np.uint8:
        return "bad_input", (f"src/tgt must be (H, W, 3) uint8 of one size, "
                             f"got {src.shape} {src.dtype} / {tgt.shape} {tgt.dtype}")
    if min(src.shape[:2]) < 2:
        return "bad_input", f"frame too small: {src.shape[1]}x{src.shape[0]}"
    if flow.shape != src.shape[:2] + (2,):
        return "bad_input", f"flow shape {flow.shape} does not match the frame {src.shape[:2]}"
    if not np.issubdtype(flow.dtype, np.floating) or not np.isfinite(flow).all():
        return "invalid_flow", "flow has non-finite values" if np.issubdtype(flow.dtype, np.floating) \
            else f"flow dtype {flow.dtype} is not floating point"
    return None


class CoarseStage(PairStage):
    """Adds ``coarse`` (H, W, 3) uint8, ``coarse_mask`` (H, W) uint8 (255 = hole) and ``meta["coarse"]``."""

    name = "coarse"

    def __init__(self, cfg):
        self.cfg = cfg
        self.c: CoarseConfig = cfg.coarse

    def _finish(self, it: PairItem, img, holes, cov: float) -> Item:
        c = self.c
        it.arrays["coarse"] = img
        it.arrays["coarse_mask"] = holes
        it.meta["coarse"] = {"coverage": round(cov, 5), "hole_frac": round(1.0 - cov, 5), "mode": c.mode,
                             "hole_thresh": c.hole_thresh}
        if c.min_coverage is not None and cov < c.min_coverage:
            return pair_reject(it, self.name, "low_coverage", f"coverage {cov:.3f} < {c.min_coverage}")
        return it

    def process(self, items: list[PairItem]) -> list[Item]:
        c = self.c
        if not c.enabled:
            return list(items)
        res: dict[int, Item] = {}
        groups: dict[tuple, list[PairItem]] = {}
        for it in items:
            bad = check_pair_arrays(it)
            if bad:
                res[id(it)] = pair_reject(it, self.name, *bad)
            else:
                groups.setdefault(it.arrays["src"].shape, []).append(it)
        for group in groups.values():
            for k in range(0, len(group), c.batch_size):
                chunk = group[k:k + c.batch_size]
                try:
                    src = np.stack([it.arrays["src"] for it in chunk])
                    tgt = np.stack([it.arrays["tgt"] for it in chunk])
                    flow = np.stack([it.arrays["flow"] for it in chunk]).astype(np.float32, copy=False)
                    img, holes, cov = coarse_edit_batch(src, flow, c.mode, tgt=tgt, hole_thresh=c.hole_thresh,
                                                        device=c.device)
                except Exception as e:  # e.g. CUDA requested but unavailable, out of memory
                    reason = "device_unavailable" if "CUDA is not available" in str(e) else "stage_error"
                    for it in chunk:
                        res[id(it)] = pair_reject(it, self.name, reason, f"{type(e).__name__}: {e}"[:500])
                    continue
                for j, it in enumerate(chunk):
                    res[id(it)] = self._finish(it, img[j], holes[j], float(cov[j]))
        return [res[id(it)] for it in items]
