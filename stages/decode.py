"""decode: read only the frames a stage needs (decord, or PyAV when decord fails), then apply the
preset's resize/crop.

decord scales while decoding when given ``width``/``height``, so large videos never materialise at
full resolution (memory per clip is bounded by ``frame.max_decode_side``). Frame counts from headers
are not trusted: :func:`open_reader` reports the count decord indexed, and reads are clamped to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, Optional, Sequence

import cv2
import numpy as np

from vid2pair.core.spec import knob, need


@dataclass
class FrameConfig:
    """Resize/crop policy applied to decoded frames before flow and storage."""
    mode: Literal["none", "resize", "short_side_crop"] = knob(
        "none", "none (the decoded size, at most max_decode_side) | resize (cover + centre crop to size) | "
                "short_side_crop (short side to short_side, "
                  "then centre crop to size)")
    size: Optional[list[int]] = knob(None, "[H, W] of the stored frames (resize, short_side_crop)", unit="px",
                                     items_ge=16)
    short_side: Optional[int] = knob(None, "short_side_crop: the short side is resized to this first", unit="px",
                                     ge=16)
    max_decode_side: int = knob(4096, "larger videos are decoded at reduced size (bounded memory)", unit="px", ge=64)

    def check(self, prefix: str = "frame") -> None:
        need(self.size is None or len(self.size) == 2, f"{prefix}.size", "must be [H, W]")
        need(self.mode == "none" or self.size is not None, f"{prefix}.size",
             f"is required when {prefix}.mode is {self.mode!r}")
        need(self.mode != "short_side_crop" or (self.short_side or 0) >= max(self.size or [0]),
             f"{prefix}.short_side", "must be set and >= max(frame.size) for short_side_crop")


class DecodeError(RuntimeError):
    """No decoder could open or decode the file; the message names each decoder and its error."""


class _Frames:
    """What ``get_batch`` / ``[i]`` return: decord's NDArray interface (``asnumpy()``)."""

    def __init__(self, arr: np.ndarray):
        self._arr = arr

    def asnumpy(self) -> np.ndarray:
        return self._arr


class PyAVReader:
    """A decord-like reader on PyAV (FFmpeg): the fallback for files decord cannot open or decode
    (theora in Ogg, streams with lying or missing headers). Frames are counted by decoding the
    stream once; reads decode sequentially from the start, keeping only the frames asked for, at
    ``width`` x ``height`` (scaled by FFmpeg's swscale)."""

    name = "pyav"

    def __init__(self, path: str, width: int = -1, height: int = -1):
        import av

        self.path, self.width, self.height = path, width, height
        with av.open(path, metadata_errors="ignore") as c:
            self._n = sum(1 for _ in c.decode(video=0))
        if self._n == 0:
            raise DecodeError(f"pyav: no decodable video frame in {path}")

    def __len__(self) -> int:
        return self._n

    def _decode(self, wanted: set[int]) -> dict[int, np.ndarray]:
        import av

        out: dict[int, np.ndarray] = {}
        last = max(wanted)
        with av.open(self.path, metadata_errors="ignore") as c:
            for i, f in enumerate(c.decode(video=0)):
                if i in wanted:
                    kw = {} if self.width <= 0 else {"width": self.width, "height": self.height}
                    out[i] = f.to_ndarray(format="rgb24", **kw)
                if i >= last:
                    break
        return out

    def get_batch(self, indices) -> _Frames:
        idx = [int(i) for i in indices]
        got = self._decode(set(idx))
        missing = [i for i in idx if i not in got]
        if missing:
            raise DecodeError(f"pyav: frames {missing[:5]} did not decode")
        return _Frames(np.stack([got[i] for i in idx]))

    def __getitem__(self, i: int) -> _Frames:
        return _Frames(self.get_batch([i]).asnumpy()[0])


def open_reader(path: str, width: int = -1, height: int = -1, decoder: str = "auto"):
    """A frame reader (``len``, ``get_batch(indices).asnumpy()``, ``[i]``) at ``width`` x ``height``.

    ``decoder``: ``decord`` (fast, random access), ``pyav`` (FFmpeg through PyAV) or ``auto``:
    decord, and PyAV when decord cannot open the file. The reader's ``vid2pair_decoder`` says which
    one it is; :class:`DecodeError` names every decoder tried and its error."""
    errors = []
    if decoder in ("auto", "decord"):
        try:
            import decord

            r = decord.VideoReader(path, ctx=decord.cpu(0), width=width, height=height, num_threads=1)
            r.vid2pair_decoder = "decord"
            return r
        except Exception as e:  # decord raises DECORDError (and RuntimeError) on files it cannot handle
            errors.append(f"decord: {type(e).__name__}: {str(e).strip().splitlines()[-1][:200]}")
            if decoder == "decord":
                raise DecodeError("; ".join(errors)) from None
    try:
        r = PyAVReader(path, width, height)
        r.vid2pair_decoder = "pyav"
        return r
    except Exception as e:
        errors.append(f"pyav: {type(e).__name__}: {str(e)[:200]}")
    raise DecodeError("; ".join(errors))


def scaled_size(w: int, h: int, target_w: int) -> tuple[int, int]:
    """(w, h) scaled to width ``target_w`` (never up), even sizes for the scaler."""
    if target_w >= w:
        return w - w % 2, h - h % 2
    th = max(2, int(round(h * target_w / w)))
    return target_w - target_w % 2, th - th % 2


def decode_size(w: int, h: int, frame_cfg) -> tuple[int, int]:
    """The (w, h) to ask decord for, so that the resize/crop policy only crops (or barely scales)."""
    mode, size = frame_cfg.mode, frame_cfg.size
    if mode == "none" or size is None:
        s = min(1.0, frame_cfg.max_decode_side / max(w, h))
    else:
        th, tw = size
        if mode == "short_side_crop":
            s = frame_cfg.short_side / min(w, h)
        else:  # resize to cover [H, W], then centre-crop
            s = max(th / h, tw / w)
        s = min(s, frame_cfg.max_decode_side / max(w, h))
    dw, dh = max(2, int(math.ceil(w * s))), max(2, int(math.ceil(h * s)))
    return dw + dw % 2, dh + dh % 2


def apply_frame_policy(frames: np.ndarray, frame_cfg) -> np.ndarray:
    """(T,H,W,3) -> (T,h,w,3) according to ``frame.mode``: none | resize (cover + centre crop) |
    short_side_crop (short side to ``short_side`` then centre crop to ``size``)."""
    if frame_cfg.mode == "none" or frame_cfg.size is None:
        return frames
    th, tw = frame_cfg.size
    t, h, w = frames.shape[:3]
    if frame_cfg.mode == "short_side_crop":
        s = frame_cfg.short_side / min(h, w)
    else:
        s = max(th / h, tw / w)
    nh, nw = max(th, int(round(h * s))), max(tw, int(round(w * s)))
    if (nh, nw) != (h, w):
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        frames = np.stack([cv2.resize(f, (nw, nh), interpolation=interp) for f in frames])
    y0, x0 = (nh - th) // 2, (nw - tw) // 2
    return np.ascontiguousarray(frames[:, y0:y0 + th, x0:x0 + tw])


def read_frames(reader, indices: Sequence[int]) -> np.ndarray:
    """Read frames by index (sorted, unique reads; returned in the requested order)."""
    n = len(reader)
    idx = [int(i) for i in indices]
    bad = [i for i in idx if i < 0 or i >= n]
    if bad:
        raise IndexError(f"frame indices {bad[:5]} outside the {n} decoded frames")
    uniq = sorted(set(idx))
    arr = reader.get_batch(uniq).asnumpy()
    pos = {f: k for k, f in enumerate(uniq)}
    return arr[[pos[i] for i in idx]]


class FrameCounter:
    """Sequential iteration over a reader that does not trust its length.

    Iterating yields ``(index, frame)`` for indices start, start + step, ... below ``stop`` (default:
    the reader's length) in chunks. When the decoder fails part-way (a header that claims more
    frames than the file holds, a truncated file), the iteration stops there instead of raising;
    ``decoded`` is the index after the last frame that really decoded (``start`` when none did) and
    ``error`` says what stopped it.
    """

    def __init__(self, reader, step: int = 1, chunk: int = 64, start: int = 0, stop: Optional[int] = None):
        self.reader, self.step, self.chunk = reader, step, chunk
        self.start, self.stop = int(start), stop
        self.decoded = self.start
        self.error = ""

    def __iter__(self):
        n = len(self.reader) if self.stop is None else min(len(self.reader), int(self.stop))
        idx = list(range(self.start, n, self.step))
        for k in range(0, len(idx), self.chunk):
            part = idx[k:k + self.chunk]
            try:
                arr = self.reader.get_batch(part).asnumpy()
            except Exception as e:  # decord raises DECORDError on broken streams
                arr = []
                for i in part:  # salvage frame by frame up to the first bad one
                    try:
                        arr.append(self.reader[i].asnumpy())
                    except Exception:
                        self.error = f"{type(e).__name__}: {e}"[:300]
                        break
                part = part[:len(arr)]
            for i, f in zip(part, arr):
                self.decoded = i + 1
                yield i, f
            if self.error:
                return


def iter_frames(reader, step: int = 1, chunk: int = 64):
    """Sequential iteration (indices 0, step, 2*step, ...) in chunks: ``(index, frame)``."""
    yield from FrameCounter(reader, step, chunk)
