"""decode: every frame the pipeline reads is the frame an in-order decode gives, or the read fails.

Frames are decoded with FFmpeg through PyAV, in one way that is exact by construction and checked
at run time:

* **The scan** (:meth:`Video.scan`) decodes a clip's span once, in order, from the start of the
  stream (or, for a later work unit of a long clip, from the keyframe before its span, after the
  decoder has seen the stream's first frame). It feeds the shot detector small frames and records,
  for every frame, its timestamp, whether the decoder called it a keyframe, and a fingerprint: an
  8-byte digest and a 32-px grey thumbnail of the frame scaled to the scan size. Frame ``i`` is the
  ``i``-th frame the in-order decode gives: that is what "the true frame" means.
* **Reads** (:meth:`Video.read`) decode forward from a keyframe the scan saw (no seek when the
  decoder already stands before the frames asked for), identify each decoded frame by its
  timestamp, and compare every frame returned with its fingerprint. A frame that differs (the
  decoder needed state a seek lost, a keyframe that is not a clean entry point) is re-read from an
  earlier keyframe, down to the scan's own starting point; one that still differs raises
  :class:`InexactFrame` with the numbers (the clip stage rejects its pair as ``decode_inexact``).

Why not seek with a random-access decoder: on h264 4:4:4 from x264 builds before 151, FFmpeg
decodes a picture right only after it saw the first frame's x264 version SEI (an old x264 bug it
works around); decord's random access and a plain PyAV seek both return grey smears there
(``real2/mouse_openfield_topdown.mp4``), and FFmpeg printed thousands of lines about it. The scan
primes the decoder with the stream's first frame and the reads keep that decoder.

FFmpeg's own log never reaches the terminal: its error lines are counted per video
(:attr:`Video.errors`), and the clip stage reports them (meta ``decode``, ``summary.json``).
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import logging
import math
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Literal, Optional, Sequence

import cv2
import numpy as np

from vid2pair.core.spec import knob, need
from vid2pair.ops.image import to_gray


@dataclass
class FrameConfig:
    """Resize/crop policy applied to decoded frames before flow and storage."""

    mode: Literal["none", "resize", "short_side_crop"] = knob(
        "none",
        "none (the decoded size, at most max_decode_side) | resize (cover + centre crop to size) | "
        "short_side_crop (short side to short_side, "
        "then centre crop to size)",
    )
    size: Optional[list[int]] = knob(
        None, "[H, W] of the stored frames (resize, short_side_crop)", unit="px", items_ge=16
    )
    short_side: Optional[int] = knob(None, "short_side_crop: the short side is resized to this first", unit="px", ge=16)
    max_decode_side: int = knob(4096, "larger videos are decoded at reduced size (bounded memory)", unit="px", ge=64)

    def check(self, prefix: str = "frame") -> None:
        need(self.size is None or len(self.size) == 2, f"{prefix}.size", "must be [H, W]")
        need(
            self.mode == "none" or self.size is not None,
            f"{prefix}.size",
            f"is required when {prefix}.mode is {self.mode!r}",
        )
        need(
            self.mode != "short_side_crop" or (self.short_side or 0) >= max(self.size or [0]),
            f"{prefix}.short_side",
            "must be set and >= max(frame.size) for short_side_crop",
        )


class DecodeError(RuntimeError):
    """The file cannot be opened or decoded; the message says what FFmpeg said."""


class InexactFrame(DecodeError):
    """A frame could not be read as the in-order decode gives it, even from the scan's start."""


# ---------------------------------------------------------------- FFmpeg's log: counted, never printed


class _ErrorCount(logging.Handler):
    """Counts FFmpeg's error lines (PyAV forwards them to the ``libav`` logger) and keeps the last."""

    def __init__(self):
        super().__init__(logging.ERROR)
        self.n = 0
        self.last = ""

    def emit(self, record: logging.LogRecord) -> None:
        self.n += 1
        self.last = record.getMessage()[:200]


_ERRORS = _ErrorCount()


def quiet_ffmpeg() -> _ErrorCount:
    """Route FFmpeg's error lines into a counter instead of the terminal (idempotent). PyAV ignores
    FFmpeg's log by default, which also hides why a decode failed; here errors are kept, counted
    and never printed (the ``libav`` logger does not propagate)."""
    import av.logging

    if av.logging.get_level() != av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
        av.logging.set_skip_repeated(False)
    log = logging.getLogger("libav")
    if _ERRORS not in log.handlers:
        log.addHandler(_ERRORS)
        log.propagate = False
    return _ERRORS


# ---------------------------------------------------------------- the exact reader

#: fingerprint thumbnails are this wide (grey levels; for the numbers of a mismatch)
THUMB_W = 32


def _fingerprint(small: np.ndarray) -> tuple[bytes, np.ndarray]:
    """(8-byte digest, grey thumbnail THUMB_W wide) of a frame scaled to the scan size."""
    digest = hashlib.blake2b(np.ascontiguousarray(small).tobytes(), digest_size=8).digest()
    h, w = small.shape[:2]
    th = max(1, int(round(h * THUMB_W / w)))
    grey = to_gray(small)
    return digest, cv2.resize(grey, (THUMB_W, th), interpolation=cv2.INTER_AREA)


#: 8-bit planar YUV formats the scan scales plane by plane with OpenCV (swscale's area filter costs
#: about as much as decoding at these sizes); any other format goes through swscale
_PLANAR_YUV = {
    "yuv420p",
    "yuvj420p",
    "yuv422p",
    "yuvj422p",
    "yuv444p",
    "yuvj444p",
    "yuv440p",
    "yuvj440p",
    "yuv411p",
    "yuv410p",
}


def _plane(p) -> np.ndarray:
    return np.frombuffer(p, np.uint8).reshape(p.height, p.line_size)[:, : p.width]


def _small(frame, width: int, height: int) -> np.ndarray:
    """A frame shrunk to ``width`` x ``height`` for the scan (shot detection, fingerprints): each YUV
    plane area-averaged by OpenCV, then converted to RGB. Deterministic for a given decoded frame,
    which is all a fingerprint needs; not the colour-exact conversion of the stored frames."""
    if frame.format.name not in _PLANAR_YUV:
        return _rgb(frame, width, height)
    yuv = cv2.merge(
        [cv2.resize(_plane(frame.planes[k]), (width, height), interpolation=cv2.INTER_AREA) for k in range(3)]
    )
    return cv2.cvtColor(yuv, cv2.COLOR_YUV2RGB)


def dhash(thumb: np.ndarray) -> int:
    """A 64-bit difference hash of a grey thumbnail (9x8, each bit: is a pixel darker than its right
    neighbour): near-identical frames have hashes a few bits apart (duplicate footage)."""
    g = cv2.resize(thumb, (9, 8), interpolation=cv2.INTER_AREA).astype(np.int16)
    bits = (g[:, :-1] < g[:, 1:]).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def _rgb(frame, width: int, height: int) -> np.ndarray:
    """An FFmpeg frame as RGB at ``width`` x ``height``: swscale's bilinear filter, which widens with
    the ratio when it shrinks (the frames the stages saw before, through decord's scaler, within a
    grey level; its area filter moved the static-camera score of a plain-desk clip across the
    threshold)."""
    return frame.to_ndarray(format="rgb24", width=width, height=height, interpolation="BILINEAR")


class Video:
    """One video file, decoded exactly (see the module docstring).

    ``scan`` first (it defines the frames), then ``read`` any frames of the scanned span, in any
    order, at any size. ``stats`` counts what the reads cost (frames decoded, seeks, re-reads);
    ``errors`` the FFmpeg error lines while decoding this video."""

    def __init__(self, path: str):
        self.path = path
        self._log = quiet_ffmpeg()
        self._err0 = self._log.n
        self.stats: Counter = Counter()
        self._c = None
        self._frames = None  # the live decoder: an iterator of (index, frame)
        self._open()
        s = self._s
        self.width, self.height = int(s.codec_context.width or 0), int(s.codec_context.height or 0)
        self.first = 0  # the scanned span: frames [first, n_frames)
        self.n_frames = 0
        self.error = ""  # what ended the scan early (a truncated or broken file), "" when the stream ended
        self.last_mismatch = ""  # the last frame a read had to read again, and by how much it was off
        self.scan_errors = 0  # FFmpeg error lines during the in-order scan: the file's own damage
        self._pts: list = []  # per scanned frame (index - first)
        self._digest: list[bytes] = []
        self._thumb: list[np.ndarray] = []
        self._hash: list[int] = []  # per scanned frame, its dhash (0 for a flat frame: no evidence)
        self._keys: list[int] = []  # indices of the frames a read may start decoding from (verified when used)
        self._key_pts: set = set()  # timestamps of the packets the container flags as keyframes
        self._by_pts: dict = {}
        self._pts_ok = True  # every scanned frame has a unique timestamp (else reads decode from the scan's start)
        self._bad: set = set()  # starts whose decode did not give the true frames
        self._at: Optional[int] = None  # index of the last frame the live decoder gave
        self._from: Optional[int] = None  # the start it decodes from (a key index, or None: the scan's start)
        self._scan_size = (0, 0)
        self._table = None  # the packet timestamps (a later work unit's scan)
        self._unit_key = None  # the keyframe packet a later work unit's scan starts from

    # -- plumbing
    @property
    def errors(self) -> int:
        """FFmpeg error lines while opening and decoding this video."""
        return self._log.n - self._err0

    @property
    def last_error(self) -> str:
        return self._log.last if self.errors else ""

    def _open(self) -> None:
        import av

        self.close()
        try:
            self._c = av.open(self.path, metadata_errors="ignore")
        except Exception as e:  # PyAV raises many error types for broken input
            raise DecodeError(f"pyav: {type(e).__name__}: {str(e)[:200]}") from None
        vs = self._c.streams.video
        if not vs:
            self.close()
            raise DecodeError("pyav: no video stream")
        self._s = vs[0]
        self._s.codec_context.thread_count = 1  # one core per clip worker
        self._fresh, self._primed, self._untouched = True, False, True

    def close(self) -> None:
        if self._c is not None:
            self._c.close()
            self._c = None
        self._frames = None

    def __enter__(self) -> "Video":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _decoded(self) -> Iterator:
        """The live container's frames in presentation order (a decode error ends the stream)."""
        self._untouched = False
        try:
            for pk in self._c.demux(self._s):
                if pk.is_keyframe and pk.pts is not None:
                    self._key_pts.add(pk.pts)
                for f in pk.decode():
                    self.stats["decoded"] += 1
                    if self._fresh:  # the decoder saw the stream's first frame and what came with it
                        self._fresh, self._primed = False, True
                    yield f
        except Exception as e:  # a broken packet or a truncated file: what came before stands
            self.error = f"{type(e).__name__}: {str(e)[:200]}"

    def _prime(self) -> None:
        """Reopen the file and decode up to its first frame, so that the decoder has seen the stream's
        headers and first-frame SEI (x264's version among them) before it is sent elsewhere."""
        if not self._untouched:
            self._open()
        for _ in self._decoded():
            break

    def _seek(self, pts) -> None:
        if self._c is None or not self._primed:
            self._prime()
        self._fresh = self._untouched = False
        self._c.seek(int(pts), stream=self._s, backward=True, any_frame=False)
        self.stats["seeks"] += 1

    # -- the scan
    def scan(
        self, start: int = 0, stop: Optional[int] = None, size: tuple[int, int] = (128, 96)
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Decode frames ``[start, stop)`` (to the end of the stream without ``stop``) once, in order,
        yielding ``(index, RGB frame at size)``, and learn their fingerprints. ``n_frames`` is then
        the index after the last frame that decoded; ``error`` says what stopped it early."""
        self._scan_size = (int(size[0]), int(size[1]))
        self.first = self.n_frames = int(start)
        self.error = ""
        errors = None
        for i, f in self._origin_frames(int(start)):
            if stop is not None and i >= stop:
                break
            if i < start:
                continue
            if errors is None:  # what came before (a later unit's pre-roll) is the seek's, not the file's
                errors = self.errors
            if i != self.n_frames:  # a gap in the timestamps: the scan cannot name the frames
                self.error = f"frame {self.n_frames} missing from the decoded stream (got {i})"
                break
            small = _small(f, *self._scan_size)
            digest, thumb = _fingerprint(small)
            self._pts.append(f.pts)
            self._digest.append(digest)
            self._thumb.append(thumb)
            self._hash.append(dhash(thumb) if float(thumb.std()) >= 2.0 else 0)  # 0: a flat frame
            if (f.key_frame or f.pts in self._key_pts) and (i > self.first or i == 0):
                self._keys.append(i)  # where the decoder or the container say decoding may start
            self.n_frames = i + 1
            yield i, small
        self._frames = None  # reads position the decoder themselves
        self.scan_errors = self.errors - (self.errors if errors is None else errors)
        pts = [p for p in self._pts if p is not None]
        self._pts_ok = len(pts) == len(self._pts) and len(set(pts)) == len(pts)
        self._by_pts = {p: self.first + k for k, p in enumerate(self._pts)} if self._pts_ok else {}

    def _origin_frames(self, start: int) -> Iterator:
        """(index, frame) the way the scan of a span starting at ``start`` decodes: from the start of the
        stream, counting frames (frame 0 is the first frame). For ``start`` > 0 (a later work unit of
        a long clip) from a keyframe packet before frame ``start`` instead, after priming, frames named
        by the rank of their timestamp among the stream's packets: accepted only when the decoder
        calls the first frame a keyframe, logs no error and names every frame up to ``start`` (else an
        earlier keyframe packet, and after three, the stream's start)."""
        self._frames = None
        if start > 0:
            table, keys = self._packet_table()
            if start < len(table):
                cands = [k for k in keys if k <= table[start]][::-1][:3]
                if self._unit_key is not None:
                    cands = [self._unit_key]
                for key_pts in cands:
                    got = self._from_key(table, key_pts, start)
                    if got is not None:
                        self._unit_key = key_pts
                        return got
        if not self._untouched:
            self._open()
        return enumerate(self._decoded())

    def _from_key(self, table: list, key_pts, start: int) -> Optional[Iterator]:
        """Frames from keyframe packet ``key_pts`` named by timestamp rank, or None when that start does
        not decode cleanly up to frame ``start`` (see :meth:`_origin_frames`). Leading frames of an open
        GOP (before the keyframe, and the errors their missing references cause) are passed over."""
        self._seek(key_pts)
        key = bisect.bisect_left(table, key_pts)
        frames = self._decoded()
        expect, errors = None, 0
        for f in frames:
            k = bisect.bisect_left(table, f.pts) if f.pts is not None else len(table)
            if k >= len(table) or table[k] != f.pts:
                return None
            if expect is None:
                if k < key:
                    continue
                if k != key or not (f.key_frame or f.pts in self._key_pts):
                    return None
                errors = self.errors
            elif k != expect or self.errors > errors:
                return None
            if k >= start:
                return itertools.chain([(k, f)], self._ranked(table, frames))
            expect = k + 1
        return None

    def _ranked(self, table: list, frames: Iterator) -> Iterator:
        for f in frames:
            k = bisect.bisect_left(table, f.pts) if f.pts is not None else len(table)
            if k < len(table) and table[k] == f.pts:
                yield k, f

    def _packet_table(self) -> tuple[list, list]:
        """Sorted timestamps of the stream's packets (one per frame) and of its keyframe packets,
        read without decoding (once per video)."""
        if self._table is None:
            if not self._untouched:
                self._open()
            self._untouched = False
            pts, keys = [], []
            for pk in self._c.demux(self._s):
                if pk.pts is None or pk.size == 0:
                    continue
                pts.append(pk.pts)
                if pk.is_keyframe:
                    keys.append(pk.pts)
            self._table = (sorted(pts), sorted(keys))
            self._open()
        return self._table

    # -- reads
    def read(self, indices: Sequence[int], size: Optional[tuple[int, int]] = None) -> np.ndarray:
        """Frames by index (any order, repeats allowed) as RGB at ``size`` (w, h; default the file's
        size), each equal to the in-order decode's frame: verified against the scan's fingerprint,
        re-read from an earlier start where it differs; :class:`InexactFrame` when no start gives it."""
        idx = [int(i) for i in indices]
        bad = [i for i in idx if not self.first <= i < self.n_frames]
        if bad:
            raise IndexError(
                f"frame indices {bad[:5]} outside the {self.n_frames - self.first} scanned frames "
                f"[{self.first}, {self.n_frames})"
            )
        w, h = size or (self.width, self.height)
        got: dict[int, np.ndarray] = {}
        todo = sorted(set(idx))
        while todo:
            self._position_for(todo[0])
            mismatch = None
            for i, f in self._frames:
                self._at = i
                if i < todo[0]:
                    continue
                if i > todo[0]:  # the frame asked for never came out from this start
                    mismatch = (todo[0], None)
                    break
                small = _small(f, *self._scan_size)
                digest, thumb = _fingerprint(small)
                if digest != self._digest[i - self.first]:
                    mismatch = (i, thumb)
                    break
                got[i] = _rgb(f, w, h)
                todo.pop(0)
                if not todo or self._jump(todo[0]):
                    break
            else:
                mismatch = (todo[0], None)  # the stream ended first
            if mismatch is not None:
                self._frames = None
                self._reject_start(self._from, *mismatch)
        self.stats["read"] += len(idx)
        return np.stack([got[i] for i in idx])

    def _start_for(self, i: int) -> Optional[int]:
        """The latest keyframe after the scan's first frame and at or before ``i`` that has not failed,
        else None: the scan's own starting point."""
        if not self._pts_ok or len(self._bad) >= MAX_BAD_STARTS:
            return None
        k = bisect.bisect_right(self._keys, i) - 1
        while k >= 0 and self._keys[k] in self._bad:
            k -= 1
        return self._keys[k] if k >= 0 and (self._keys[k] > self.first or self._keys[k] == 0) else None

    def _jump(self, i: int) -> bool:
        """Whether reaching frame ``i`` from a later keyframe decodes less than going on from here."""
        start = self._start_for(i)
        return start is not None and self._at is not None and start > self._at + 1

    def _position_for(self, i: int) -> None:
        """Make the live decoder stand before frame ``i``: go on where it is when it is before ``i`` and
        past the best start, else restart from that start."""
        start = self._start_for(i)
        at = self._at
        if self._frames is not None and at is not None and at < i and (start is None or at >= start - 1):
            return
        self._from, self._at = start, None
        if start is None:
            self._frames = self._origin_frames(self.first)
            self.stats["from_origin"] += 1
            return
        self._seek(self._pts[start - self.first])
        by_pts = self._by_pts
        self._frames = ((by_pts[f.pts], f) for f in self._decoded() if f.pts in by_pts)

    def _reject_start(self, start: Optional[int], i: int, thumb: Optional[np.ndarray]) -> None:
        """Reading frame ``i`` from ``start`` did not give the true frame: never start there again."""
        self.stats["rereads"] += 1
        if thumb is not None:
            d = np.abs(thumb.astype(np.int16) - self._thumb[i - self.first].astype(np.int16))
            detail = f"frame {i}: mean |diff| {d.mean():.1f}, max {int(d.max())} grey levels from the in-order decode"
        else:
            detail = f"frame {i} did not come out" + (f" ({self.error})" if self.error else "")
        self.last_mismatch = detail
        if start is None:
            raise InexactFrame(
                f"{detail}, even decoding in order from the scan's start ({self.errors} FFmpeg error lines)"
            )
        self._bad.add(start)

    def footage(self, max_frames: int = 2048) -> dict:
        """The scanned frames' hashes (every ``stride``-th, at most ``max_frames``), to find clips that
        repeat other clips' footage (``pipeline.io.duplicate_footage``)."""
        stride = max(1, -(-len(self._hash) // max_frames))
        return {"first": self.first, "stride": stride, "hashes": "".join(f"{h:016x}" for h in self._hash[::stride])}

    def summary(self) -> dict:
        """What decoding this video met and cost, for the sample's meta and ``summary.json``."""
        out = {
            "decoder": "pyav",
            "frames": self.n_frames - self.first,
            "errors": self.scan_errors,
            "seek_errors": self.errors - self.scan_errors,
            "decoded": int(self.stats["decoded"]),
            "seeks": int(self.stats["seeks"]),
            "rereads": int(self.stats["rereads"]),
            "bad_starts": len(self._bad),
        }
        if self.errors:
            out["last_error"] = self.last_error
        return out


#: after this many keyframes of a video failed to give the true frames, its reads decode in order
#: from the scan's start (a container whose seeking is broken everywhere costs one failure per read)
MAX_BAD_STARTS = 3


def open_video(path: str) -> Video:
    """A :class:`Video` for ``path``; :class:`DecodeError` naming FFmpeg's complaint when it cannot open."""
    return Video(path)


# ---------------------------------------------------------------- sizes and the frame policy


def scaled_size(w: int, h: int, target_w: int) -> tuple[int, int]:
    """(w, h) scaled to width ``target_w`` (never up), even sizes for the scaler."""
    if target_w >= w:
        return w - w % 2, h - h % 2
    th = max(2, int(round(h * target_w / w)))
    return target_w - target_w % 2, th - th % 2


def decode_size(w: int, h: int, frame_cfg) -> tuple[int, int]:
    """The (w, h) to decode at, so that the resize/crop policy only crops (or barely scales)."""
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
    return np.ascontiguousarray(frames[:, y0 : y0 + th, x0 : x0 + tw])


def decode_all(path: str, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """Every frame of ``path`` decoded in order with a plain PyAV loop (RGB, at ``size`` (w, h) or the
    file's size, scaled as the reads scale): the reference the reads are held to, independent of
    :class:`Video`. For tests and benchmarks (it holds the whole clip)."""
    import av

    quiet_ffmpeg()
    with av.open(path, metadata_errors="ignore") as c:
        s = c.streams.video[0]
        s.codec_context.thread_count = 1
        w, h = size or (s.codec_context.width, s.codec_context.height)
        return np.stack([_rgb(f, w, h) for f in c.decode(s)])
