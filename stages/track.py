"""Point tracking from the TARGET back to the SOURCE, drag points and the matching supervision.

Conventions
-----------
* Pixel ``(x, y)`` is column ``x``, row ``y`` of the stored images; integer coordinates are pixel
  centres (OpenCV), the same as the flow stage.
* A tracker receives frames in REVERSED time order, ``frames_tgt_to_src[0]`` is the target and
  ``frames_tgt_to_src[-1]`` the source, and query points ``(x, y)`` on the target (query frame
  0). It returns the points' positions on the source and whether they are visible there.
* ``arrays["tracks"]`` (N, 4) float32 rows ``[x_tgt, y_tgt, x_src, y_src]`` for the query grid,
  ``arrays["visibility"]`` (N,) uint8 (1 = visible on the source and inside the frame). Invisible
  rows keep the tracker's estimate (never NaN); consumers must mask them.

Backends (:func:`make_tracker`)
-------------------------------
``flow_chain`` (default, weight-free, CPU)
    DIS optical flow chained from the target to the source over intermediate frames with an
    ADAPTIVE step: a cheap motion profile (DIS between consecutive frames at
    ``analysis_width``) plans hops so each covers about ``step_px`` of motion, then full-size
    DIS flows are computed for just those hops (initialised with the profile's composed flow)
    and the points are carried through them. Tracking back source -> target over the same hops
    gives a forward-backward error; points with an error above ``fb_thresh_px`` (occluded,
    lost) or ending outside the frame are invisible.
``cotracker3_offline`` / ``cotracker3_online``
    CoTracker3 through ``torch.hub`` (a GitHub repo name or a local checkout holding
    ``hubconf.py``) with weights from ``checkpoint`` or the model cache
    (:func:`pipeline.models.resolve_weights`, which raises ``MissingWeightsError``).

See docs/tracking.md for the measured accuracy, costs and the reasons behind the defaults.
"""
from __future__ import annotations

import contextlib
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Protocol, Sequence, Union, runtime_checkable

import cv2
import numpy as np

from pipeline.items import Item, PairItem, clip_seed
from stages.base import PairStage, pair_reject

__all__ = [
    "TrackConfig",
    "Tracker",
    "FlowChainTracker",
    "CoTrackerTracker",
    "make_tracker",
    "load_cotracker_predictor",
    "auto_grid_stride",
    "query_grid",
    "subsample_indices",
    "TrackStage",
    "TRACK_BACKENDS",
]

TRACK_BACKENDS = ("flow_chain", "cotracker3_offline", "cotracker3_online")

# --------------------------------------------------------------------------------------
# config


@dataclass
class TrackConfig:
    enabled: bool = True
    backend: str = "flow_chain"  # flow_chain | cotracker3_offline | cotracker3_online
    # frames between target and source given to the tracker (evenly subsampled, both ends kept)
    max_frames: int = 24
    # query grid spacing in stored px; 0 = auto: one point per latent token of the image once it
    # is resized to a 576 px short side (8 px at 576x1024, 3 px at 240x320): auto_grid_stride()
    grid_stride: int = 0
    step_px: float = 20.0  # flow_chain: motion covered by one chained DIS hop
    fb_thresh_px: float = 2.0  # flow_chain: forward-backward error above this -> invisible
    dis_preset: str = "medium"  # flow_chain: ultrafast | fast | medium
    analysis_width: int = 160  # flow_chain: width of the motion profile used to plan the hops
    min_visible_frac: float = 0.1  # fewer visible grid points than this fraction -> pair rejected
    hub_repo: str = "facebookresearch/co-tracker"  # GitHub owner/name, or a local dir with hubconf.py
    checkpoint: Optional[str] = None  # local weights; default: the model cache (vid2pair models fetch)
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 (half only on CUDA)
    batch_size: int = 4  # pairs per tracker call
    num_gpus: float = 0.0  # per tracker actor in the Ray runner

    def validate(self, prefix: str = "track") -> None:
        from pipeline.config import ConfigError  # lazy: pipeline.config may import this module

        def need(ok: bool, key: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"{prefix}.{key}: {msg}")

        need(self.backend in TRACK_BACKENDS, "backend", f"{self.backend!r} is not one of {list(TRACK_BACKENDS)}")
        need(self.max_frames >= 2, "max_frames", "must be >= 2 (target and source)")
        need(self.grid_stride >= 0, "grid_stride", "must be >= 0 (0 = auto)")
        need(math.isfinite(self.step_px) and self.step_px > 0, "step_px", "must be > 0")
        need(math.isfinite(self.fb_thresh_px) and self.fb_thresh_px > 0, "fb_thresh_px", "must be > 0")
        need(self.dis_preset in ("ultrafast", "fast", "medium"), "dis_preset",
             f"{self.dis_preset!r} is not one of ['fast', 'medium', 'ultrafast']")
        need(self.analysis_width >= 32, "analysis_width", "must be >= 32")
        need(0.0 <= self.min_visible_frac <= 1.0, "min_visible_frac", "must be in [0, 1]")
        need(bool(self.hub_repo), "hub_repo", "must not be empty")
        need(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"), "device",
             f"{self.device!r} is not one of auto, cpu, cuda, cuda:N")
        need(self.precision in ("fp32", "fp16"), "precision", f"{self.precision!r} is not one of ['fp16', 'fp32']")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.num_gpus >= 0, "num_gpus", "must be >= 0")


# --------------------------------------------------------------------------------------
# geometry helpers


def auto_grid_stride(height: int, width: int) -> int:
    """Query spacing (stored px) giving at least one point per latent token.

    FramePainter / SVD latents are 1/8 of the model input; at 576x1024 a token is 8x8 px. The
    trainer resizes stored images so their short side is 576 (the frame policy's cover + crop),
    so a token spans ``8 * short / 576`` stored px; the stride is that, floored, at least 1.
    """
    return max(1, int(math.floor(8.0 * min(height, width) / 576.0 + 1e-9)))


def query_grid(height: int, width: int, stride: int) -> np.ndarray:
    """(N, 2) float32 ``(x, y)`` at the centres of ``stride`` x ``stride`` cells, row-major.

    Cell ``(r, c)`` covers pixels ``[c*s, (c+1)*s)``; its centre is ``((c + 0.5) * s - 0.5, ...)``
    in pixel-centre coordinates, the same centres as an ``s``-px token grid.
    """
    s = int(stride)
    if s < 1:
        raise ValueError(f"grid stride must be >= 1, got {stride}")
    nx, ny = max(1, width // s), max(1, height // s)
    xs = (np.arange(nx, dtype=np.float32) + 0.5) * s - 0.5
    ys = (np.arange(ny, dtype=np.float32) + 0.5) * s - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def subsample_indices(n: int, max_frames: int) -> np.ndarray:
    """At most ``max_frames`` evenly spaced indices of ``n`` frames, first and last kept."""
    if n < 2:
        raise ValueError(f"tracking needs at least 2 frames, got {n}")
    if n <= max_frames:
        return np.arange(n)
    return np.unique(np.rint(np.linspace(0, n - 1, max(2, max_frames))).astype(int))


def sample_field(field: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Bilinear samples (N, C) of an (H, W, C) float32 field at (N, 2) points (replicated border)."""
    pts = np.asarray(pts, np.float32)
    n = len(pts)
    if n == 0:
        return np.zeros((0, field.shape[2]), np.float32)
    cols = 1024  # cv2.remap maps must stay below 32767 per dimension
    rows = -(-n // cols)
    mx = np.zeros(rows * cols, np.float32)
    my = np.zeros(rows * cols, np.float32)
    mx[:n], my[:n] = pts[:, 0], pts[:, 1]
    out = cv2.remap(np.ascontiguousarray(field, np.float32), mx.reshape(rows, cols), my.reshape(rows, cols),
                    cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(rows * cols, -1)[:n]


def _inside(pts: np.ndarray, height: int, width: int) -> np.ndarray:
    return ((pts[:, 0] >= -0.5) & (pts[:, 0] <= width - 0.5) & (pts[:, 1] >= -0.5)
            & (pts[:, 1] <= height - 0.5) & np.isfinite(pts).all(axis=1))


# --------------------------------------------------------------------------------------
# interface


@runtime_checkable
class Tracker(Protocol):
    """Tracks query points from frame 0 (the target) to the last frame (the source)."""

    name: str
    version: str

    def __call__(self, frames_tgt_to_src: Union[np.ndarray, Sequence[np.ndarray]],
                 queries_xy: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, T, H, W, 3) uint8 (or a list of (T, H, W, 3)), queries (N, 2) or (B, N, 2) on frame 0
        -> tracks (B, N, 2) float32 positions on frame T-1, visible (B, N) bool."""
        ...


def _batch_inputs(frames, queries) -> tuple[list[np.ndarray], list[np.ndarray]]:
    clips = [np.asarray(f) for f in frames] if isinstance(frames, (list, tuple)) else list(np.asarray(frames))
    if not clips:
        raise ValueError("no clips to track")
    for c in clips:
        if c.ndim != 4 or c.shape[-1] != 3 or c.dtype != np.uint8 or c.shape[0] < 2:
            raise ValueError(f"tracker frames must be (T>=2, H, W, 3) uint8 RGB, got {c.shape} {c.dtype}")
    q = np.asarray(queries, np.float32)
    if q.ndim == 2:
        qs = [q] * len(clips)
    elif q.ndim == 3 and len(q) == len(clips):
        qs = list(q)
    else:
        raise ValueError(f"queries must be (N, 2) or (B, N, 2), got {q.shape} for {len(clips)} clip(s)")
    for x in qs:
        if x.ndim != 2 or x.shape[1] != 2 or not np.isfinite(x).all():
            raise ValueError(f"queries must be finite (N, 2) x, y, got {x.shape}")
    return clips, qs


# --------------------------------------------------------------------------------------
# flow_chain


_DIS_PRESETS = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
                "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}


def _gray(img: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2GRAY)


def auto_finest_scale(height: int, width: int) -> int:
    """DIS finest pyramid level for the chained hops: work at a short side of 240-480 px.

    The presets stop at level 1 (half size), which smears flow over object boundaries; on the
    240x320 synthetic clips level 0 cuts the moving points' median error from ~2 px to ~0.15 px.
    Larger frames keep the same effective working size (576 -> level 1, 1080 -> level 2).
    """
    return max(0, int(math.floor(math.log2(max(1, min(height, width)) / 240.0))))


def _motion_stat(flow: np.ndarray, min_px: float) -> float:
    """p90 magnitude of the pixels moving more than ``min_px`` (0 when nothing moves)."""
    mag = np.sqrt(flow[..., 0] ** 2 + flow[..., 1] ** 2)
    moving = mag[mag > min_px]
    if moving.size < 8:
        return 0.0
    return float(np.percentile(moving, 90))


class FlowChainTracker:
    """Weight-free tracker: DIS flow chained over adaptively chosen hops (see the module docstring).

    ``step_px``: the motion one hop should cover. DIS alone loses objects beyond ~15-20 px of
    motion, and every extra hop adds interpolation drift, so hops are as long as possible under
    that bound. ``fb_thresh_px``: forward-backward error above which a point is invisible.
    ``analysis_width``: width of the consecutive-frame motion profile used to plan the hops.
    ``init``: initialise each full-size hop with the composed low-resolution profile flows.
    """

    name = "flow_chain"

    def __init__(self, step_px: float = 20.0, fb_thresh_px: float = 2.0, dis_preset: str = "medium",
                 analysis_width: int = 160, init: bool = True, fb: bool = True,
                 finest_scale: Optional[int] = None) -> None:
        if dis_preset not in _DIS_PRESETS:
            raise ValueError(f"dis_preset must be one of {sorted(_DIS_PRESETS)}, got {dis_preset!r}")
        if step_px <= 0 or fb_thresh_px <= 0 or analysis_width < 16:
            raise ValueError("step_px and fb_thresh_px must be > 0 and analysis_width >= 16")
        self.step_px = float(step_px)
        self.fb_thresh_px = float(fb_thresh_px)
        self.dis_preset = dis_preset
        self.analysis_width = int(analysis_width)
        self.init = bool(init)
        self.fb = bool(fb)
        self.finest_scale = finest_scale
        self._dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[dis_preset])
        self._plan_dis = cv2.DISOpticalFlow_create(_DIS_PRESETS[dis_preset])
        self._plan_dis.setFinestScale(0)  # the profile must resolve ~1 px steps at analysis_width
        self.version = (f"opencv-{cv2.__version__}/dis-{dis_preset}/step{self.step_px:g}px"
                        f"/fb{self.fb_thresh_px:g}px/aw{self.analysis_width}{'' if self.init else '/noinit'}")
        self.last_info: list[dict] = []

    # DIS with an optional initial flow (OpenCV uses a same-size CV_32FC2 `flow` argument as init)
    def _dis_calc(self, a: np.ndarray, b: np.ndarray, init: Optional[np.ndarray] = None, dis=None) -> np.ndarray:
        dis = dis or self._dis
        if init is None:
            return dis.calc(a, b, None)
        return dis.calc(a, b, np.ascontiguousarray(init, np.float32))

    def plan(self, gray: Sequence[np.ndarray]) -> tuple[list[tuple[int, int]], np.ndarray, list[np.ndarray], float]:
        """Hops ``[(i, j), ...]`` from frame 0 to frame T-1, each covering about ``step_px``.

        Returns the hops, the per-step motion (T-1,) in full-size px, the low-resolution
        consecutive flows (for initialisation) and their scale.
        """
        t = len(gray)
        h, w = gray[0].shape
        if t == 2:
            self._inits = []
            return [(0, 1)], np.zeros(1), [], 1.0
        s = min(1.0, self.analysis_width / float(w))
        if s < 1.0:
            size = (max(16, int(round(w * s))), max(16, int(round(h * s))))
            small = [cv2.resize(g, size, interpolation=cv2.INTER_AREA) for g in gray]
            s = size[0] / float(w)
        else:
            small = list(gray)
        flows = [self._dis_calc(small[k], small[k + 1], dis=self._plan_dis) for k in range(t - 1)]
        step = np.array([_motion_stat(f, 0.5 * s) / s for f in flows])
        # grow each hop while the COMPOSED low-res flow over it moves (p90 of moving px) <= step_px
        from stages.flow import compose_flows

        hops, inits, i, acc = [], [], 0, None
        for k in range(t - 1):
            nxt = flows[k] if acc is None else compose_flows(acc, flows[k])
            if acc is not None and _motion_stat(nxt, 1.0 * s) / s > self.step_px:
                hops.append((i, k))
                inits.append(acc)
                i, nxt = k, flows[k]
            acc = nxt
        hops.append((i, t - 1))
        inits.append(acc)
        self._inits = inits
        return hops, step, flows, s

    def _init_flow(self, k: int, shape: tuple[int, int], s: float) -> Optional[np.ndarray]:
        inits = getattr(self, "_inits", None)
        if not self.init or not inits:
            return None
        h, w = shape
        return cv2.resize(inits[k], (w, h), interpolation=cv2.INTER_LINEAR) / s

    def track_one(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        gray = [_gray(f) for f in frames]
        h, w = gray[0].shape
        if any(g.shape != (h, w) for g in gray):
            raise ValueError("frames differ in size")
        fs = self.finest_scale if self.finest_scale is not None else auto_finest_scale(h, w)
        self._dis.setFinestScale(int(fs))
        hops, step, flows, s = self.plan(gray)
        pts = np.asarray(queries, np.float32).copy()
        fwd = []
        for k, (i, j) in enumerate(hops):
            f = self._dis_calc(gray[i], gray[j], self._init_flow(k, (h, w), s))
            fwd.append(f)
            pts = pts + sample_field(f, pts)
        visible = _inside(pts, h, w)
        fb_err = np.zeros(len(pts), np.float32)
        if self.fb:
            back = pts.copy()
            for (i, j), f in zip(reversed(hops), reversed(fwd)):
                # backward hop, initialised with the forward hop inverted (-F at the point it came from)
                b_init = None
                if self.init:
                    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
                    back_guess = -f
                    for _ in range(2):  # fixed point of b(y) = -f(y + b(y))
                        back_guess = -cv2.remap(f, xs + back_guess[..., 0], ys + back_guess[..., 1],
                                                cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                    b_init = back_guess
                b = self._dis_calc(gray[j], gray[i], b_init)
                back = back + sample_field(b, back)
            fb_err = np.linalg.norm(back - queries, axis=1).astype(np.float32)
            visible &= fb_err <= self.fb_thresh_px
        info = {"hops": [[int(i), int(j)] for i, j in hops], "finest_scale": int(fs),
                "profile_px": [round(float(x), 2) for x in step],
                "fb_median_px": round(float(np.median(fb_err)) if len(fb_err) else 0.0, 3)}
        return pts.astype(np.float32), visible, info

    def __call__(self, frames_tgt_to_src, queries_xy) -> tuple[np.ndarray, np.ndarray]:
        clips, qs = _batch_inputs(frames_tgt_to_src, queries_xy)
        n = {len(q) for q in qs}
        if len(n) != 1:
            raise ValueError("all clips in a batch need the same number of queries")
        tracks, vis, self.last_info = [], [], []
        for c, q in zip(clips, qs):
            p, v, info = self.track_one(c, q)
            tracks.append(p)
            vis.append(v)
            self.last_info.append(info)
        return np.stack(tracks).astype(np.float32), np.stack(vis).astype(bool)
