"""A stage written the way a new signal is added: one module, one line in the stage list.

It writes ``toy.png`` (the source, inverted), declares a ``toy`` signal with its own quality rule
(:func:`judge_toy`: the quality stage drops it from pairs whose source frame number is odd), its
own QC panel (:func:`draw_toy`), its score (``q_toy_src_frame``) and QC metric (``toy_mean_grey``:
its caption words and histogram) and its trainer input (:data:`TOY_INPUT`: ``vid2pair train`` with
``task: toy`` conditions on the inverted source), and an index column (and its type);
tests/test_contract.py checks that the encoder, the index, the signal list and the pre-flight
follow from these declarations alone.
"""

from __future__ import annotations

import numpy as np

from vid2pair.core.stage import Member, Metrics, Need, PairStage, Score, Signal, TrainInput
from vid2pair.ops.draw import Panel, PanelView


def judge_toy(p, it, sc: dict, sig_fail: dict) -> None:
    """The toy's rule: it is the inverted source, and the source frame number is even."""
    if "toy" not in it.arrays:
        return
    sc["toy_src_frame"] = int(it.meta["src_frame"])
    if not np.array_equal(it.arrays["toy"], 255 - p.src):
        sig_fail["toy"] = ("toy_not_inverted", "toy.png is not the inverted source")
    elif it.meta["src_frame"] % 2:
        sig_fail["toy"] = ("toy_odd_frame", f"source frame {it.meta['src_frame']} is odd")


def draw_toy(v: PanelView) -> list[Panel]:
    """The toy's QC panel: toy.png, or a placeholder saying why it is missing."""
    img = v.sample.image("toy.png")  # (toy.json shares the stem)
    if img is None:
        return [v.missing("toy", "toy", "toy.png", "toy")]
    return [Panel("toy", "toy (the inverted source)", v.disp(img))]


TOY_METRICS = Metrics(
    ("toy_mean_grey",),
    measure=lambda meta, read: {"toy_mean_grey": (meta.get("toy") or {}).get("mean")},
    caption=lambda v: None if v["toy_mean_grey"] is None else f"toy mean {v['toy_mean_grey']:.0f}",
    plot=lambda view: view.hist([("pairs", view.col("toy_mean_grey"))], "toy mean grey", "grey level"),
)

TOY_INPUT = TrainInput(
    channels=3,
    decode=lambda r: {"signal": r.image("toy.png", rgb=True)},
    display=lambda signal, src: ((signal + 1) / 2).clamp(0, 1),
)


class ToyStage(PairStage):
    name = "toy"
    reads = ("src",)
    writes = (Member("toy.png", "toy", "png"), Member("toy.json", "toy_json", "json"))
    signals = (
        Signal(
            "toy",
            ("toy.png", "toy.json"),
            "toy.enabled",
            judge=judge_toy,
            panels=("toy",),
            draw=draw_toy,
            scores=(Score("toy_src_frame", "int64", title="toy source frame"),),
            metrics=TOY_METRICS,
            train=TOY_INPUT,
        ),
    )

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
