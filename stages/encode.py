"""encode: a pair's arrays and meta to tar-member bytes (the last stage).

``src`` / ``tgt`` in ``output.image_format``, ``flow.npy`` (and ``flow_bwd.npy``) when
``output.flow`` is not ``none``, every member the enabled stages before it declare
(:attr:`vid2pair.core.stage.Stage.writes`: PNG images and masks, ``.npy`` arrays, JSON taken out
of the meta), and ``meta.json`` last, listing the files and the signals the sample carries
(``meta["signals"]``: every declared signal whose members are all present; the index has them as
the comma-separated ``signals`` column) and the sample's ``split`` (``train`` / ``eval``, drawn per
clip from the clip id with ``output.eval_frac``: :mod:`vid2pair.core.split`).
"""

from __future__ import annotations

import io
import json

import cv2
import numpy as np

from vid2pair.core.items import Item, PairItem
from vid2pair.core.split import split_of
from vid2pair.core.stage import Member, PairStage, Signal

__all__ = ["EncodeStage", "encode_image", "encode_npy"]


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """RGB (H, W, 3) or single-channel (H, W) uint8 -> ``fmt`` bytes (``jpg`` / ``jpeg``, ``png``, ``webp``)."""
    fmt = "jpg" if fmt == "jpeg" else fmt
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 and img.shape[2] == 3 else img
    params = []
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality)]
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode image as {fmt}")
    return buf.tobytes()


def encode_npy(arr: np.ndarray) -> bytes:
    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


class EncodeStage(PairStage):
    """Arrays -> tar member bytes (``it.files``); ``members``: what the stages before it declared."""

    name = "encode"
    reads = ("src", "tgt", "flow", "flow_bwd")

    @classmethod
    def build(cls, cfg, upstream=()):
        return cls(cfg, tuple(m for s in upstream for m in s.writes), tuple(g for s in upstream for g in s.signals))

    @classmethod
    def index_columns(cls, meta: dict) -> dict:
        return {"signals": ",".join(meta.get("signals") or []), "split": meta.get("split", "train")}

    index_schema = {"signals": "string", "split": "string"}

    def __init__(self, cfg, members: tuple[Member, ...] = (), signals: tuple[Signal, ...] = ()):
        super().__init__(cfg)
        self.members = members
        self.signals = signals

    def one(self, it: PairItem) -> Item:
        o = self.cfg.output
        a = it.arrays
        files = {
            f"src.{o.image_format}": encode_image(a["src"], o.image_format, o.jpeg_quality),
            f"tgt.{o.image_format}": encode_image(a["tgt"], o.image_format, o.jpeg_quality),
        }
        if o.flow != "none" and "flow" in a:  # (the quality stage drops a flow that does not hold)
            files["flow.npy"] = encode_npy(a["flow"].astype(o.flow))
            if "flow_bwd" in a:
                files["flow_bwd.npy"] = encode_npy(a["flow_bwd"].astype(o.flow))
        for m in self.members:
            if m.codec == "png" and m.key in a:
                files[m.name] = encode_image(a[m.key], "png")
            elif m.codec == "npy" and m.key in a:
                files[m.name] = encode_npy(a[m.key])
            elif m.codec == "json" and m.key in it.meta:
                files[m.name] = json.dumps(it.meta.pop(m.key), sort_keys=True).encode()
        it.meta["key"] = it.key
        it.meta["split"] = split_of(it.clip_id, o.eval_frac)  # whole clips: no clip feeds both sides
        it.meta["signals"] = [g.name for g in self.signals if all(m in files for m in g.members)]
        it.meta["files"] = sorted(files) + ["meta.json"]
        files["meta.json"] = json.dumps(it.meta, sort_keys=True).encode()
        it.files, it.arrays = files, {}
        return it
