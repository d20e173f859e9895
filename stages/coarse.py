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
from typing import Literal, Optional

import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.core.items import Item, PairItem
from vid2pair.core.spec import knob, need
from vid2pair.core.stage import Member, PairStage, drop_signal, pair_reject
from vid2pair.stages.evidence import judge_warped_edit, warped_edit_signal
from vid2pair.stages.splat import MODES, check_pair_arrays

__all__ = ["CoarseConfig", "coarse_edit", "coarse_edit_batch", "CoarseStage"]


@dataclass
class CoarseConfig:
    """The coarse edit: the source softmax-splatted along the flow, with its hole mask."""

    enabled: bool = knob(True, "coarse.png + coarse_mask.png")
    mode: Literal["sum", "avg", "linear", "soft"] = knob("soft", "splatting mode")
    min_coverage: Optional[float] = knob(
        0.6, "reject pairs whose non-hole fraction is below this; null: keep all", unit="frac", ge=0, le=1
    )
    hole_rule: Literal["density", "alpha"] = knob(
        "density",
        "density (ours): a pixel is a hole when the sum-splatted bilinear density of the source is <= "
        "hole_thresh (stretched content, e.g. a zoom, leaves holes); alpha (Magic Fixup): softmax-splat "
        "an alpha of ones with the image's weights, a hole where it is <= hole_thresh (only where "
        "nothing lands)",
    )
    hole_thresh: float = knob(0.5, "the hole threshold of hole_rule", ge=0, lt=1)
    device: str = knob("cpu", "cpu | cuda | cuda:N | auto")
    batch_size: int = knob(8, "pairs of equal size splatted together", ge=1)
    mask_inconsistent: bool = knob(
        True, "do not splat forward-backward inconsistent pixels (flow.fb_mask): they become holes, not ghost copies"
    )

    def check(self, prefix: str = "coarse") -> None:
        need(
            self.device in ("cpu", "cuda", "auto") or (self.device.startswith("cuda:") and self.device[5:].isdigit()),
            f"{prefix}.device",
            f"must be 'cpu', 'cuda', 'cuda:N' or 'auto', got {self.device!r}",
        )


def _to_tensor_images(a: np.ndarray, dev):
    import torch

    return torch.from_numpy(np.ascontiguousarray(a)).to(dev).permute(0, 3, 1, 2).float().div_(255.0)


def coarse_edit_batch(
    src: np.ndarray,
    flow: np.ndarray,
    mode: str = "soft",
    *,
    tgt: Optional[np.ndarray] = None,
    hole_thresh: float = 0.5,
    device: str = "cpu",
    hole_rule: str = "density",
):
    """Batched :func:`coarse_edit`: ``src`` / ``tgt`` (B, H, W, 3) uint8, ``flow`` (B, H, W, 2) src -> tgt.

    Returns ``(coarse (B, H, W, 3) uint8, hole_mask (B, H, W) uint8 (255 = hole), coverage (B,) float64)``.
    """
    import torch

    from vid2pair.stages.splat import magicfixup_metric, splat_with_density

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
        if hole_rule == "alpha":  # Magic Fixup: splat an alpha of ones with the same (softmax) weights
            ones = torch.ones_like(s[:, :1])
            out, dens = splat_with_density(torch.cat([s, ones], 1), f, metric, mode)
            holes = out[:, 3] <= hole_thresh
            out = out[:, :3]
        else:
            out, dens = splat_with_density(s, f, metric, mode)
            holes = dens[:, 0] <= hole_thresh
        img = out.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8).permute(0, 2, 3, 1)
        img = img.masked_fill(holes[..., None], 0)
        coverage = 1.0 - holes.flatten(1).float().mean(dim=1) if holes[0].numel() else torch.zeros(len(src))
        return (img.cpu().numpy(), holes.to(torch.uint8).mul_(255).cpu().numpy(), coverage.double().cpu().numpy())


def coarse_edit(
    src: np.ndarray,
    flow: np.ndarray,
    mode: str = "soft",
    *,
    tgt: Optional[np.ndarray] = None,
    hole_thresh: float = 0.5,
    device: str = "cpu",
    hole_rule: str = "density",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Splat ``src`` (H, W, 3) uint8 along ``flow`` (H, W, 2, src -> tgt) to the target layout.

    ``tgt`` (H, W, 3) uint8 is needed by ``soft`` / ``linear`` (the Magic Fixup metric). Returns
    ``(coarse (H, W, 3) uint8, hole_mask (H, W) uint8 255 = hole, coverage float)``.
    """
    img, holes, cov = coarse_edit_batch(
        np.asarray(src)[None],
        np.asarray(flow)[None],
        mode,
        tgt=None if tgt is None else np.asarray(tgt)[None],
        hole_thresh=hole_thresh,
        device=device,
        hole_rule=hole_rule,
    )
    return img[0], holes[0], float(cov[0])


def judge_coarse(p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The coarse edit's rules (its :attr:`~vid2pair.core.stage.Signal.judge`): those of a warped edit
    (:func:`~vid2pair.stages.evidence.judge_warped_edit`), with the gain ``quality.coarse_min_gain_db``.
    The coarse edit is the source warped by the forward flow: under that gain the flow does not draw
    the target where it changed, and with ``quality.flow_needs_coarse_gain`` the dense flow signals
    go too (``flow_no_gain``: ``woman_drinking_room`` 20->95, a raised arm and cup that moved 20 px
    where the largest flow is 5.4)."""
    judge_warped_edit("coarse", p.c.coarse_min_gain_db, p, it, sc, sig_fail)
    g = sc.get("coarse_gain_db")
    if p.c.flow_needs_coarse_gain and g is not None and g < p.c.coarse_min_gain_db:
        for name in ("flow", "flow_bwd"):
            sig_fail.setdefault(
                name,
                (
                    "flow_no_gain",
                    f"the source warped by the flow (the coarse edit) gains {g} dB over no edit on the "
                    f"changed region (< {p.c.coarse_min_gain_db}): the flow does not follow what moved",
                ),
            )


class CoarseStage(PairStage):
    """Adds ``coarse`` (H, W, 3) uint8, ``coarse_mask`` (H, W) uint8 (255 = hole) and ``meta["coarse"]``."""

    name = "coarse"
    sections = {"coarse": CoarseConfig}
    reads = ("src", "tgt", "flow", "flow_valid")
    writes = (Member("coarse.png", "coarse", "png"), Member("coarse_mask.png", "coarse_mask", "png"))
    signals = (warped_edit_signal("coarse", "coarse edit", judge_coarse, count="coverage", preview_rank=0),)

    def __init__(self, cfg):
        super().__init__(cfg)
        self.c: CoarseConfig = cfg.coarse

    def _splat_flow(self, it: PairItem) -> np.ndarray:
        """The flow to splat: forward-backward inconsistent pixels (``flow_valid``, from the flow
        stage) are not splatted (a non-finite flow sends a pixel nowhere), so they leave holes
        instead of ghosts."""
        f = np.asarray(it.arrays["flow"], np.float32)
        valid = it.arrays.get("flow_valid")
        if self.c.mask_inconsistent and valid is not None:
            f = f.copy()
            f[~np.asarray(valid, bool)] = np.nan
        return f

    def _finish(self, it: PairItem, img, holes, cov: float) -> Item:
        c = self.c
        it.arrays["coarse"] = img
        it.arrays["coarse_mask"] = holes
        it.meta["coarse"] = {
            "coverage": round(cov, 5),
            "hole_frac": round(1.0 - cov, 5),
            "mode": c.mode,
            "hole_rule": c.hole_rule,
            "hole_thresh": c.hole_thresh,
        }
        if c.min_coverage is not None and cov < c.min_coverage:  # the other signals go on
            del it.arrays["coarse"], it.arrays["coarse_mask"]
            return drop_signal(it, self.name, "coarse", "low_coverage", f"coverage {cov:.3f} < {c.min_coverage}")
        return it

    def process(self, items: list[PairItem]) -> list[Item]:
        c = self.c
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
                chunk = group[k : k + c.batch_size]
                try:
                    src = np.stack([it.arrays["src"] for it in chunk])
                    tgt = np.stack([it.arrays["tgt"] for it in chunk])
                    flow = np.stack([self._splat_flow(it) for it in chunk])
                    img, holes, cov = coarse_edit_batch(
                        src, flow, c.mode, tgt=tgt, hole_thresh=c.hole_thresh, device=c.device, hole_rule=c.hole_rule
                    )
                except Exception as e:  # e.g. CUDA requested but unavailable, out of memory
                    reason = "device_unavailable" if "CUDA is not available" in str(e) else "stage_error"
                    for it in chunk:
                        res[id(it)] = pair_reject(it, self.name, reason, f"{type(e).__name__}: {e}"[:500])
                    continue
                for j, it in enumerate(chunk):
                    res[id(it)] = self._finish(it, img[j], holes[j], float(cov[j]))
        return [res[id(it)] for it in items]
