"""Base class of the per-pair stages (pure: no Ray). See pipeline/graph.py for the pipeline."""
from __future__ import annotations

from vid2pair.core.items import Item, PairItem, Reject


class PairStage:
    """Base for stages that transform pair items; rejects and markers pass through untouched."""

    name = "pair"

    def __call__(self, items: list[Item]) -> list[Item]:
        pairs_in = [i for i in items if isinstance(i, PairItem)]
        done = {id(i): r for i, r in zip(pairs_in, self.process(pairs_in))} if pairs_in else {}
        return [done.get(id(i), i) for i in items]

    def process(self, items: list[PairItem]) -> list[Item]:
        out = []
        for it in items:
            try:
                out.append(self.one(it))
            except Exception as e:
                out.append(pair_reject(it, self.name, "stage_error", f"{type(e).__name__}: {e}"[:500]))
        return out

    def one(self, it: PairItem) -> Item:
        raise NotImplementedError


def pair_reject(it: PairItem, stage: str, reason: str, detail: str = "") -> Reject:
    return Reject(source=it.source, clip_id=it.clip_id, chunk=it.chunk, clip_idx=it.clip_idx, stage=stage,
                  reason=reason, detail=detail, level="pair", key=it.key)


def resolve_device(device: str):
    """``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available) -> ``torch.device``."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device != "cpu" and not str(device).startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available")
    return torch.device(device)
