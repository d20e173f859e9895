"""Trainer models. Every model is an ``nn.Module`` with

* ``forward(batch, generator=None) -> (loss, logs)`` (the training loss; DDP wraps this),
* ``predict(batch, steps=None, generator=None) -> (B, 3, H, W)`` in [-1, 1] (eval predictions),
* ``trainable_named_parameters()``, ``checkpoint_state_dict()`` / ``load_checkpoint_state_dict()``
  (what a checkpoint holds: the trained parts only),
* ``match_grids``: token grids ``(h, w)`` whose correspondences the data loader must provide.
"""

from __future__ import annotations

import torch

from vid2pair.trainer.config import TrainerConfig


def build_model(cfg: TrainerConfig, device: torch.device = torch.device("cpu")) -> torch.nn.Module:
    if cfg.model.name == "tiny":
        from vid2pair.trainer.models.tiny import TinyDiffusion

        return TinyDiffusion(cfg)
    if cfg.model.name == "framepainter":
        from vid2pair.trainer.models.framepainter import FramePainterModel

        return FramePainterModel(cfg, device)
    raise ValueError(f"unknown model {cfg.model.name!r}")
