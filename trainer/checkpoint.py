"""Checkpoints (atomic, ``torch.load(weights_only=True)``-loadable), RNG state and EMA.

Layout under ``<output_dir>/checkpoints/``::

    step-00001000/state.pt    model (trained parts), EMA, optimizer, LR scheduler, grad scaler,
                              step, data position, RNG states of every rank, config, world size
    latest                    name of the newest complete checkpoint (text)

A checkpoint is written by rank 0 into ``step-XXXXXXXX.tmp/`` (fsynced) and renamed into place, so
a crash never leaves something that looks complete; ``latest`` is replaced atomically afterwards.
Everything in ``state.pt`` is tensors and plain Python types (RNG states are converted), so it
loads with ``weights_only=True``.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import shutil
from pathlib import Path
from typing import Optional

import numpy as np
import torch

STEP_RE = re.compile(r"^step-(\d{8})$")


# --------------------------------------------------------------------------- RNG


def rng_state() -> dict:
    py = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    out = {
        "python": [int(py[0]), [int(x) for x in py[1]], py[2]],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s for s in torch.cuda.get_rng_state_all()]
    return out


def set_rng_state(s: dict) -> None:
    py = s["python"]
    random.setstate((int(py[0]), tuple(int(x) for x in py[1]), py[2]))
    n = s["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(s["torch"])
    if "cuda" in s and torch.cuda.is_available():
        states = s["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


# --------------------------------------------------------------------------- EMA


class EMA:
    """Exponential moving average of the trained parameters (fp32 shadow copies).

    ``decay_t = min(decay, (1 + t) / (10 + t))`` (warm-up, so early averages are not dominated by
    the initial weights)."""

    def __init__(self, named_params: list, decay: float):
        self.decay = decay
        self.names = [n for n, _ in named_params]
        self.shadow = [p.detach().float().clone() for _, p in named_params]
        self.num_updates = 0

    @torch.no_grad()
    def update(self, params: list) -> None:
        self.num_updates += 1
        t = self.num_updates
        d = min(self.decay, (1 + t) / (10 + t))
        cur = [p.detach().float() for p in params]
        torch._foreach_lerp_(self.shadow, cur, 1.0 - d)

    def state_dict(self) -> dict:
        return {
            "decay": self.decay,
            "num_updates": self.num_updates,
            "shadow": {n: s for n, s in zip(self.names, self.shadow)},
        }

    def load_state_dict(self, sd: dict) -> None:
        missing = [n for n in self.names if n not in sd["shadow"]]
        if missing:
            raise KeyError(f"EMA state lacks {len(missing)} parameter(s), e.g. {missing[0]}")
        self.shadow = [sd["shadow"][n].float().to(s.device) for n, s in zip(self.names, self.shadow)]
        self.num_updates = int(sd["num_updates"])

    def to(self, device) -> "EMA":
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    @contextlib.contextmanager
    def swapped(self, params: list):
        """Temporarily load the EMA weights into ``params`` (for evaluation)."""
        backup = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, s in zip(params, self.shadow):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)


# --------------------------------------------------------------------------- files


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_checkpoint(ckpt_root: Path, step: int, state: dict, keep: int) -> Path:
    """Write ``state`` atomically as ``ckpt_root/step-{step:08d}/state.pt``; keep the newest ``keep``."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:08d}"
    tmp = ckpt_root / f"step-{step:08d}.tmp"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / "state.pt", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    latest_tmp = ckpt_root / "latest.tmp"
    latest_tmp.write_text(final.name + "\n")
    os.replace(latest_tmp, ckpt_root / "latest")
    _fsync_dir(ckpt_root)
    for old in list_checkpoints(ckpt_root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    if not ckpt_root.is_dir():
        return []
    out = [p for p in ckpt_root.iterdir() if p.is_dir() and STEP_RE.match(p.name) and (p / "state.pt").is_file()]
    return sorted(out, key=lambda p: int(STEP_RE.match(p.name).group(1)))


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    cks = list_checkpoints(ckpt_root)
    return cks[-1] if cks else None


def resolve_checkpoint(path) -> Path:
    """A ``state.pt`` file, a ``step-*`` directory, a ``checkpoints/`` directory or a run directory
    -> the ``state.pt`` to load (the newest complete one for directories)."""
    p = Path(path).expanduser()
    if p.is_file():
        return p
    if (p / "state.pt").is_file():
        return p / "state.pt"
    for root in (p, p / "checkpoints"):
        last = latest_checkpoint(root)
        if last is not None:
            return last / "state.pt"
    raise FileNotFoundError(
        f"no checkpoint at {p} (expected a state.pt, a step-XXXXXXXX directory, or a run directory with checkpoints/)"
    )


def load_state(path, map_location="cpu") -> dict:
    """``torch.load(..., weights_only=True)`` of a ``state.pt`` (or what :func:`resolve_checkpoint` finds)."""
    return torch.load(resolve_checkpoint(path), map_location=map_location, weights_only=True)
