"""The records that flow between stages, and their (pickle-free) row encoding for Ray Data.

Three kinds of item travel through the pipeline:

* :class:`PairItem` — a candidate pair (arrays + meta), later an encoded sample (``files``);
* :class:`Reject`   — a clip, shot or pair that was dropped, with its stage and reason;
* :class:`ClipDone` — the last item of a clip: how many items it emitted before the marker (each
  later stage maps an item to exactly one item), so the writer knows when every item of a clip,
  and so of a shard, has arrived, whatever order a runner delivers them in.

Stages only transform ``PairItem``; rejects and markers pass through untouched.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np


@dataclass
class ClipTask:
    """One work unit: an input clip, or (a long clip split by ``input.unit_s``) the span
    ``[start_s, end_s)`` of it, with the clip's stable identity and the unit's output chunk
    (= shard). ``clip_idx`` numbers the work units of a build (one per clip when none is split);
    ``end_s <= 0``: to the end of the clip."""

    source: str
    clip_idx: int
    chunk: int
    clip_id: str
    unit: int = 0
    units: int = 1
    start_s: float = 0.0
    end_s: float = 0.0

    @property
    def split(self) -> bool:
        return self.units > 1

    @property
    def label(self) -> str:
        """The unit as the commit markers name it: the source, plus ``#unit U/N`` for a split clip."""
        return f"{self.source}#unit {self.unit + 1}/{self.units}" if self.split else self.source

    @property
    def unit_key(self) -> str:
        return f"{self.clip_id}_u{self.unit:03d}"

    @property
    def shot_base(self) -> int:
        """Shot numbers of a split clip's unit U start at U * SHOTS_PER_UNIT: unique in the clip."""
        return self.unit * SHOTS_PER_UNIT


#: shot numbers reserved per work unit of a split clip (a unit with more shots is rejected)
SHOTS_PER_UNIT = 10000


@dataclass
class PairItem:
    key: str
    clip_id: str
    source: str
    chunk: int
    clip_idx: int
    meta: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)  # name -> np.ndarray
    files: dict = field(default_factory=dict)  # tar member suffix ("src.jpg") -> bytes, after encoding


@dataclass
class Reject:
    source: str
    clip_id: str
    chunk: int
    clip_idx: int
    stage: str
    reason: str
    detail: str = ""
    level: str = "clip"  # clip | shot | pair | signal
    key: str = ""  # pair key (pair and signal level) or shot key (shot level)
    preview: bytes = b""  # a small JPEG of the rejected pair (core.preview), for output.reject_previews


@dataclass
class ClipDone:
    source: str
    clip_id: str
    chunk: int
    clip_idx: int
    n_items: int
    info: dict = field(default_factory=dict)


Item = Union[PairItem, Reject, ClipDone]

_SAFE = re.compile(r"[^A-Za-z0-9_-]+")


def sanitize(text: str, max_len: int = 40) -> str:
    """Make a key component: only [A-Za-z0-9_-], no dots, slashes or '..'; never empty."""
    s = _SAFE.sub("-", text).strip("-_")[:max_len]
    return s or "clip"


def clip_id_for(source: str, identity: str | None = None) -> str:
    """Stable clip identity: sanitised file stem + 10 hex of sha1(``identity``), where the identity is
    the clip's name under its input root (``pipeline.io.clip_identity``), so that the same corpus
    gets the same ids, keys and seeds wherever it is mounted; the source itself when not given."""
    stem = Path(str(source).rstrip("/")).stem
    h = hashlib.sha1(str(identity or source).encode("utf-8", "surrogatepass")).hexdigest()[:10]
    return f"{sanitize(stem)}-{h}"


def pair_key(clip_id: str, shot: int, src: int, tgt: int) -> str:
    return f"{clip_id}_s{shot:03d}_f{src:06d}_f{tgt:06d}"


# ---------------------------------------------------------------- row encoding (Ray Data)


def _pack(arrays: dict, files: dict) -> bytes:
    if not arrays and not files:
        return b""
    payload = {f"a:{k}": np.ascontiguousarray(v) for k, v in arrays.items()}
    payload.update({f"f:{k}": np.frombuffer(v, dtype=np.uint8) for k, v in files.items()})
    buf = io.BytesIO()
    np.savez(buf, **payload)
    return buf.getvalue()


def _unpack(blob: bytes) -> tuple[dict, dict]:
    arrays, files = {}, {}
    if not blob:
        return arrays, files
    with np.load(io.BytesIO(blob), allow_pickle=False) as z:
        for name in z.files:
            kind, k = name.split(":", 1)
            if kind == "a":
                arrays[k] = z[name]
            else:
                files[k] = z[name].tobytes()
    return arrays, files


def item_to_row(it: Item) -> dict[str, Any]:
    if isinstance(it, PairItem):
        return {
            "kind": "pair",
            "chunk": it.chunk,
            "clip_idx": it.clip_idx,
            "key": it.key,
            "source": it.source,
            "clip_id": it.clip_id,
            "meta": json.dumps(it.meta),
            "blob": _pack(it.arrays, it.files),
        }
    if isinstance(it, Reject):
        d = {k: getattr(it, k) for k in ("stage", "reason", "detail", "level")}
        return {
            "kind": "reject",
            "chunk": it.chunk,
            "clip_idx": it.clip_idx,
            "key": it.key,
            "source": it.source,
            "clip_id": it.clip_id,
            "meta": json.dumps(d),
            "blob": it.preview or b"",
        }
    return {
        "kind": "done",
        "chunk": it.chunk,
        "clip_idx": it.clip_idx,
        "key": "",
        "source": it.source,
        "clip_id": it.clip_id,
        "meta": json.dumps({"n_items": it.n_items, "info": it.info}),
        "blob": b"",
    }


def row_to_item(row: dict) -> Item:
    kind, meta = row["kind"], json.loads(row["meta"])
    base = dict(source=row["source"], clip_id=row["clip_id"], chunk=int(row["chunk"]), clip_idx=int(row["clip_idx"]))
    if kind == "pair":
        arrays, files = _unpack(row["blob"])
        return PairItem(key=row["key"], meta=meta, arrays=arrays, files=files, **base)
    if kind == "reject":
        return Reject(key=row["key"], preview=bytes(row["blob"] or b""), **meta, **base)
    return ClipDone(n_items=meta["n_items"], info=meta["info"], **base)


ROW_COLUMNS = ("kind", "chunk", "clip_idx", "key", "source", "clip_id", "meta", "blob")


def rows_to_table(rows: list[dict]):
    import pyarrow as pa

    schema = pa.schema(
        [
            ("kind", pa.string()),
            ("chunk", pa.int64()),
            ("clip_idx", pa.int64()),
            ("key", pa.string()),
            ("source", pa.string()),
            ("clip_id", pa.string()),
            ("meta", pa.string()),
            ("blob", pa.large_binary()),
        ]
    )
    return pa.Table.from_pylist(rows, schema=schema)
