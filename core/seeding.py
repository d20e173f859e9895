"""The one seeding scheme: every random draw is keyed by the global seed and stable names.

``rng_for(seed, clip_id, "shot", 3)`` gives the same generator on every machine, runner and rerun;
two different key tuples give independent streams. Nothing in vid2pair uses global random state.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np


def derive_seed(*parts) -> int:
    """A 60-bit integer from ``parts`` (anything with a stable ``str``)."""
    h = hashlib.sha1(json.dumps([str(p) for p in parts]).encode("utf-8", "surrogatepass")).hexdigest()
    return int(h[:15], 16)


def rng_for(*parts) -> np.random.Generator:
    """A numpy generator keyed by ``parts`` (e.g. ``(cfg.seed, pair_key, "drag")``)."""
    return np.random.default_rng(derive_seed(*parts))
