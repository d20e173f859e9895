"""Train / eval split: whole clips, drawn from the clip id (so that no clip feeds both sides).

``bucket(clip_id)`` is a stable number in ``[0, 1000)`` (sha1, independent of the machine and of
PYTHONHASHSEED); a clip is in the eval split when its bucket is below ``eval_frac x 1000``. The
trainer's ``data.eval_split_by: clip`` uses the same buckets, so ``data.eval_permille: 50`` holds out
the clips ``output.eval_frac: 0.05`` marks ``eval``.
"""

from __future__ import annotations

import hashlib

SPLITS = ("train", "eval")


def bucket(text: str) -> int:
    """A stable bucket in ``[0, 1000)`` of ``text``."""
    return int(hashlib.sha1(text.encode()).hexdigest()[:8], 16) % 1000


def split_of(clip_id: str, eval_frac: float) -> str:
    """``"eval"`` for the clips a fraction ``eval_frac`` of all clips falls on, else ``"train"``."""
    return "eval" if bucket(clip_id) < int(round(float(eval_frac) * 1000)) else "train"
