"""Trainer inputs that several signals share (:class:`vid2pair.core.stage.TrainInput`).

:func:`edit_with_holes`: an edited image with a hole mask (the coarse edit, the collage) as a
4-channel conditioning image, RGB in [-1, 1] and the mask in {0, 1}.
"""

from __future__ import annotations

import numpy as np

from vid2pair.core.stage import TrainInput


def _holes_magenta(signal, src):
    """RGB with the holes drawn magenta, in [0, 1]."""
    rgb, m = (signal[:, :3] + 1) / 2, signal[:, 3:4]
    hole = signal.new_tensor([1.0, 0.0, 1.0]).view(1, 3, 1, 1)
    return (rgb * (1 - m) + hole * m).clamp(0, 1)


def _holes_from_source(signal, src):
    """The edit as an answer: its holes filled from the source."""
    rgb, hole = signal[:, :3], signal[:, 3:4] > 0.5
    return rgb.where(~hole, src.float())


def edit_with_holes(image: str, mask: str) -> TrainInput:
    """The trainer input of an edited image member ``image`` with its hole mask ``mask``."""

    def decode(r) -> dict:
        return {"signal": np.concatenate([r.image(image, rgb=True), r.image(mask, rgb=False)], 0)}

    return TrainInput(channels=4, decode=decode, display=_holes_magenta, baseline=_holes_from_source)
