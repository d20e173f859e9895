"""A model stage's share of a pair: what the Ray runner sends to a model stage's actors (only the
arrays the stage reads: :func:`slim`), what comes back (only what it changed: :func:`mark_unchanged`)
and how it is merged into the pair (:func:`merge_back`)."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from vid2pair.core.items import Item, PairItem, Reject

#: in what a model stage sends back: "rows ``start:stop`` of the array ``key`` you sent me"
#: (``(SAME, key, start, stop, one)``, ``one``: a single row, without its axis)
SAME = "__vid2pair_same__"


def slim(items: list[Item], reads: Iterable[str]) -> list[Item]:
    """What a model stage receives: each pair with only the arrays the stage declares in ``reads``
    (meta whole, no encoded files); rejects and markers are not sent."""
    reads = set(reads)
    return [
        PairItem(
            key=it.key,
            clip_id=it.clip_id,
            source=it.source,
            chunk=it.chunk,
            clip_idx=it.clip_idx,
            meta=it.meta,
            arrays={k: v for k, v in it.arrays.items() if k in reads},
        )
        for it in items
        if isinstance(it, PairItem)
    ]


def _rows_of(v, s):
    """``(start, stop, one)`` when ``v`` is rows of ``s`` along its first axis (the same memory), else None."""

    if not (
        isinstance(s, np.ndarray)
        and isinstance(v, np.ndarray)
        and s.ndim > 0
        and s.dtype == v.dtype
        and s.strides[0] > 0
    ):
        return None
    off = v.__array_interface__["data"][0] - s.__array_interface__["data"][0]
    if off < 0 or off % s.strides[0]:
        return None
    start = off // s.strides[0]
    if v.shape == s.shape[1:] and v.strides == s.strides[1:] and start < s.shape[0]:
        return start, start + 1, True
    if v.ndim == s.ndim and v.shape[1:] == s.shape[1:] and v.strides == s.strides and start + v.shape[0] <= s.shape[0]:
        return start, start + v.shape[0], False
    return None


def mark_unchanged(sent: dict, out: dict, before: dict) -> dict:
    """The arrays a model stage returns, with every one that is an array it was sent, or rows of one
    (frames cut at a target, the source as frame 0), and still holds what ``before`` (a copy of the
    arrays as sent) holds there, replaced by a ``SAME`` marker: it does not travel back. An array the
    stage changed in place travels back."""

    marked = {}
    for k, v in out.items():
        marked[k] = v
        for sk, s in ([(k, sent[k])] if k in sent else []) + list(sent.items()):
            rows = _rows_of(v, s)
            if rows is not None:
                start, stop, one = rows
                if np.array_equal(v, before[sk][start] if one else before[sk][start:stop]):
                    marked[k] = (SAME, sk, *rows)
                break
    return marked


def merge_back(orig: PairItem, out: Item, sent: Iterable[str], previews: tuple = ()) -> Item:
    """``orig`` after a model stage returned ``out`` for its slim copy: the arrays that were not sent
    stay, the sent ones become what the stage left of them (kept, cut, replaced or dropped), the new
    ones are added. A reject gets its preview from the whole pair, as in process."""
    from vid2pair.core.stage import reject_preview

    if not isinstance(out, PairItem):
        if isinstance(out, Reject) and out.level == "pair":
            out.preview = reject_preview(orig, previews)
        return out
    sent = set(sent)
    arrays = {k: v for k, v in orig.arrays.items() if k not in sent}
    for k, v in out.arrays.items():
        if isinstance(v, tuple) and len(v) == 5 and v[0] == SAME:
            _, sk, start, stop, one = v
            v = orig.arrays[sk][start] if one else orig.arrays[sk][start:stop]
        arrays[k] = v
    out.arrays = arrays
    return out
