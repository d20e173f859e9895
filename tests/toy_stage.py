"""A stage written the way a new signal is added: one module, one line in the stage list.

It writes ``toy.png`` (the source, inverted), declares a ``toy`` signal and an index column (and
its type);
tests/test_contract.py checks that the encoder, the index, the signal list and the pre-flight
follow from these declarations alone.
"""

from __future__ import annotations

import numpy as np

from vid2pair.core.stage import Member, Need, PairStage, Signal


class ToyStage(PairStage):
    name = "toy"
    reads = ("src",)
    writes = (Member("toy.png", "toy", "png"), Member("toy.json", "toy_json", "json"))
    signals = (Signal("toy", ("toy.png", "toy.json"), "toy.enabled"),)

    @classmethod
    def index_columns(cls, meta: dict) -> dict:
        return {"toy_mean": (meta.get("toy") or {}).get("mean")}

    index_schema = {"toy_mean": "float64"}

    def one(self, it):
        it.arrays["toy"] = 255 - it.arrays["src"]
        it.meta["toy"] = {"mean": round(float(np.mean(it.arrays["toy"])), 3)}
        it.meta["toy_json"] = {"hello": it.key}
        return it


class NeedyToyStage(ToyStage):
    """The same stage, needing an optional extra that is not installed."""

    @classmethod
    def needs(cls, cfg):
        return [Need("extra", "vid2pair_no_such_module", "toy.backend=needy", extra="toy")]
