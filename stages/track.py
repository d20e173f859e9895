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
    lost), ending outside the frame, or whose 7x7 patches at both ends do not correlate
    (``min_ncc``) are invisible.
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
from typing import Any, Callable, Literal, Optional, Protocol, Sequence, Union, runtime_checkable

import cv2
import numpy as np

from vid2pair.core.device import resolve_device
from vid2pair.core.items import Item, PairItem
from vid2pair.core.seeding import rng_for
from vid2pair.core.spec import frame_scale, knob, need, validate
from vid2pair.core.stage import Member, Metrics, Need, PairStage, Resources, Score, Signal, drop_signal, pair_reject
from vid2pair.ops.draw import _pct
from vid2pair.ops.flow_backends import DIS_PRESETS, DisPreset, auto_finest_scale, dis_calc, plan_hops
from vid2pair.ops.flow_math import invert_flow
from vid2pair.ops.image import to_gray
from vid2pair.stages.drag import DRAG_INPUT, DRAG_METRICS, DRAG_SCORES, DragConfig, draw_drag, judge_drag
from vid2pair.stages.evidence import (
    coherent_matches,
    enclosed_by,
    in_mask,
    klt_contradicts,
    klt_tracks,
    klt_verify,
    looks_like_still,
    moved_not_still,
    patch_diff,
    patch_ncc,
    plain_patches,
    sample_field,
    sparse_matches,
    still_support,
    textured,
)

#: hold_still_plain_max_px applies to points with what moves on both sides within this (px@240) along
#: two of the four lines through them (evidence.enclosed_by): the inside of a plain hand or jacket
#: whose outline moved; a plain desk beside a pushed coin is not
_PLAIN_REACH_PX = 40

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
    """Target -> source point tracking: drag handles and the matching-attention supervision."""

    enabled: bool = knob(True, "track target->source: drag points, tracks.npy / visibility.npy")
    backend: Literal["flow_chain", "cotracker3_offline", "cotracker3_online"] = knob(
        "flow_chain", "flow_chain (weight-free, CPU) | cotracker3_offline | cotracker3_online (weights)"
    )
    max_frames: int = knob(
        24,
        "frames between target and source given to the tracker (evenly subsampled, both ends kept)",
        unit="frames",
        ge=2,
    )
    grid_stride: int = knob(
        0,
        "query grid spacing; 0 = auto: one point per latent token of the image resized to a "
        "576-px short side (8 px at 576x1024, 3 px at 240x320)",
        unit="px",
        ge=0,
    )
    step_px: float = knob(20.0, "flow_chain: motion covered by one chained DIS hop", unit="px@dis", gt=0)
    fb_thresh_px: float = knob(2.0, "flow_chain: forward-backward error above this: invisible", unit="px@dis", gt=0)
    min_ncc: float = knob(
        0.5, "flow_chain: 7x7 patch NCC target vs source below this: invisible (-1: off)", ge=-1, le=1
    )
    dis_preset: DisPreset = knob("medium", "flow_chain: OpenCV DIS preset of the hops")
    analysis_width: int = knob(160, "flow_chain: width of the motion profile used to plan the hops", unit="px", ge=32)
    hold_still: bool = knob(
        True,
        "a fixed camera: grid points where source and target do not change (the same "
        "support as flow.static_suppress, computed here from the pair) stay where they "
        "are, visible, whatever the tracker said (chained flow cannot follow plain, still "
        "surfaces); false: the tracker's own output",
    )
    hold_still_plain_max_px: Optional[float] = knob(
        3.0,
        "hold_still: a held point on a plain target surface (evidence.textured false) that the "
        "tracker moved farther than this, with what moves on both sides (within 40 px@240 along two "
        "of the four lines through it), is hidden, not held: "
        "'nothing changed' proves nothing inside a plain moving thing (the back of a hand, a black "
        "jacket whose outline moved 10 px reads the same skin or cloth at the same place); null: "
        "held like the rest",
        unit="px@240",
        gt=0,
    )
    follow_rematch: bool = knob(
        True,
        "points on an object the flow stage re-matched (flow.rematch) take their "
        "source from the backward flow there, wherever the tracker lost it; false: "
        "the tracker's own output",
    )
    flow_consistent: bool = knob(
        True,
        "a point that moves (not held still, not re-matched) is visible only where the flow "
        "stage found the target pixel's correspondence consistent (flow_bwd_valid, with "
        "flow.fb_mask): what an arm uncovered is not tracked back onto the arm; false: the "
        "tracker's own output",
    )
    klt_check: bool = knob(
        True,
        "a point that moves is invisible where Lucas-Kanade, following its source point forward "
        "and its target point backward frame to frame through the frames in between (each hop "
        "checked forward-backward and for its look), arrives on both paths elsewhere than the "
        "other end: the tracker jumped to a look-alike (cars in a queue); a point either path "
        "loses (a deforming hand, an occlusion) keeps the tracker's answer; false: the "
        "tracker's own output",
    )
    min_visible_frac: float = knob(
        0.1, "fewer visible grid points than this fraction: pair rejected", unit="frac", ge=0, le=1
    )
    hub_repo: str = knob("facebookresearch/co-tracker", "cotracker: GitHub owner/name, or a local dir with hubconf.py")
    checkpoint: Optional[str] = knob(None, "cotracker: local weights; default: the model cache (vid2pair models fetch)")
    device: str = knob("auto", "cotracker: auto | cpu | cuda | cuda:N")
    precision: Literal["fp16", "fp32"] = knob(
        "fp16", "cotracker: fp16 autocast on CUDA (half the memory); CPU stays fp32"
    )
    batch_size: int = knob(2, "pairs per tracker call", ge=1)
    num_gpus: float = knob(0.0, "GPUs per tracker actor in the Ray runner; flow_chain never asks for one", ge=0)

    def check(self, prefix: str = "track") -> None:
        need(bool(self.hub_repo), f"{prefix}.hub_repo", "must not be empty")
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"{prefix}.device",
            f"{self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )


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


def _inside(pts: np.ndarray, height: int, width: int) -> np.ndarray:
    return (
        (pts[:, 0] >= -0.5)
        & (pts[:, 0] <= width - 0.5)
        & (pts[:, 1] >= -0.5)
        & (pts[:, 1] <= height - 0.5)
        & np.isfinite(pts).all(axis=1)
    )


# --------------------------------------------------------------------------------------
# interface


@runtime_checkable
class Tracker(Protocol):
    """Tracks query points from frame 0 (the target) to the last frame (the source)."""

    name: str
    version: str

    def __call__(
        self, frames_tgt_to_src: Union[np.ndarray, Sequence[np.ndarray]], queries_xy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
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


class FlowChainTracker:
    """Weight-free tracker: DIS flow chained over adaptively planned hops.

    1. Motion profile: DIS (finest level 0) between consecutive frames resized to
       ``analysis_width`` (cheap: ~6 ms a step at 160x90).
    2. Plan: a hop from frame ``i`` grows while the profile flows composed over it move the
       moving pixels (p90 of those above 1 px) by at most ``step_px`` (in px of DIS's working
       resolution, i.e. ``step_px * 2**finest_scale`` stored px).
    3. Each hop: full-size DIS from frame ``i`` to ``j``, initialised with the composed profile
       flow (without the init DIS loses 60-70 px objects beyond ~15-19 px of motion); the query
       points are carried through the hops by bilinear sampling.
    4. Forward-backward: the points are carried back through the reversed hops (DIS ``j -> i``,
       initialised with the inverted forward hop). An error above ``fb_thresh_px`` (same units
       as ``step_px``) or an end point outside the frame makes a point invisible.
    5. Appearance: the 7x7 grey patches at the query (frame 0) and at the tracked point (frame
       T-1) must correlate (NCC >= ``min_ncc``; -1 disables). This catches what forward-backward
       cannot: a point whose chain stuck to the static background in both directions (an object
       outline, or an object leaving the frame).

    The knobs (``step_px``, ``fb_thresh_px``, ``dis_preset``, ``analysis_width``, ``min_ncc``) come
    from a :class:`TrackConfig` (its defaults when none is given). ``finest_scale``: DIS's finest
    pyramid level for the hops (None: :func:`auto_finest_scale`); ``init`` / ``fb`` switch off the
    profile initialisation / the forward-backward check (ablations).
    """

    name = "flow_chain"

    def __init__(
        self,
        cfg: Optional[TrackConfig] = None,
        *,
        finest_scale: Optional[int] = None,
        init: bool = True,
        fb: bool = True,
    ) -> None:
        cfg = cfg if cfg is not None else TrackConfig()
        validate(cfg, "track.")
        self.step_px = float(cfg.step_px)
        self.fb_thresh_px = float(cfg.fb_thresh_px)
        self.dis_preset = cfg.dis_preset
        self.analysis_width = int(cfg.analysis_width)
        self.finest_scale = finest_scale
        self.init = bool(init)
        self.fb = bool(fb)
        self.min_ncc = float(cfg.min_ncc)
        self._dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.dis_preset])
        self._profile_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[self.dis_preset])
        self._profile_dis.setFinestScale(0)  # resolve ~1 px steps at analysis_width
        fs = "auto" if finest_scale is None else str(int(finest_scale))
        self.version = (
            f"opencv-{cv2.__version__}/dis-{self.dis_preset}/step{self.step_px:g}/fb{self.fb_thresh_px:g}"
            f"/ncc{self.min_ncc:g}/aw{self.analysis_width}/fs-{fs}{'' if self.init else '/noinit'}"
            f"{'' if self.fb else '/nofb'}"
        )
        self.last_info: list[dict] = []

    def plan(
        self, gray: Sequence[np.ndarray], step_px: Optional[float] = None
    ) -> tuple[list[tuple[int, int]], list[Optional[np.ndarray]], np.ndarray]:
        """Hops ``[(i, j), ...]`` covering frames 0..T-1, their initial flows (full size, or None)
        and the per-step motion profile (T-1,) in stored px (:func:`~vid2pair.stages.flow.plan_hops`)."""
        return plan_hops(
            gray, self.step_px if step_px is None else step_px, self.analysis_width, self._profile_dis, init=self.init
        )

    def track_one(self, frames: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict]:
        """One clip (T, H, W, 3), frame 0 = query frame -> positions on frame T-1, visible, info."""
        gray = [to_gray(f) for f in frames]
        h, w = gray[0].shape
        fs = self.finest_scale if self.finest_scale is not None else auto_finest_scale(h, w)
        self._dis.setFinestScale(int(fs))
        unit = float(2 ** int(fs))  # stored px per px of DIS's working resolution
        hops, inits, profile = self.plan(gray, self.step_px * unit)
        q = np.asarray(queries, np.float32)
        pts = q.copy()
        fwd = []
        for (i, j), init in zip(hops, inits):
            f = dis_calc(self._dis, gray[i], gray[j], init)
            fwd.append(f)
            pts = pts + sample_field(f, pts)
        visible = _inside(pts, h, w)
        fb_err = np.zeros(len(pts), np.float32)
        if self.fb:
            back = pts.copy()
            for (i, j), f in zip(reversed(hops), reversed(fwd)):
                b = dis_calc(self._dis, gray[j], gray[i], invert_flow(f) if self.init else None)
                back = back + sample_field(b, back)
            fb_err = np.linalg.norm(back - q, axis=1).astype(np.float32)
            visible &= fb_err <= self.fb_thresh_px * unit
        n_app = 0
        if self.min_ncc > -1.0 and visible.any():
            ncc = patch_ncc(gray[0], q[visible], gray[-1], pts[visible])
            keep = ncc >= self.min_ncc
            n_app = int((~keep).sum())
            visible[np.flatnonzero(visible)[~keep]] = False
        info = {
            "hops": [[int(i), int(j)] for i, j in hops],
            "finest_scale": int(fs),
            "motion_px": round(float(profile.sum()), 2),
            "fb_median_px": round(float(np.median(fb_err)) if len(fb_err) else 0.0, 3),
            "appearance_rejected": n_app,
        }
        return pts.astype(np.float32), visible, info

    def __call__(self, frames_tgt_to_src, queries_xy) -> tuple[np.ndarray, np.ndarray]:
        clips, qs = _batch_inputs(frames_tgt_to_src, queries_xy)
        if len({len(q) for q in qs}) != 1:
            raise ValueError("all clips of a batch need the same number of queries")
        tracks, vis, info = [], [], []
        for c, q in zip(clips, qs):
            p, v, i = self.track_one(c, q)
            tracks.append(p)
            vis.append(v)
            info.append(i)
        self.last_info = info
        return np.stack(tracks).astype(np.float32), np.stack(vis).astype(bool)


# --------------------------------------------------------------------------------------
# CoTracker3


def _hub_source(hub_repo: str) -> tuple[str, str]:
    """(repo_or_dir, "local" | "github"); clear errors for a bad local directory."""
    repo = str(hub_repo).strip()
    local = os.path.expanduser(repo)
    if os.path.isdir(local):
        if not os.path.isfile(os.path.join(local, "hubconf.py")):
            raise FileNotFoundError(
                f"track.hub_repo: local directory {local} has no hubconf.py; point it at a checkout of "
                f"https://github.com/facebookresearch/co-tracker (or use the GitHub name "
                f"'facebookresearch/co-tracker')"
            )
        return local, "local"
    name = repo.split(":", 1)[0]
    if repo.startswith(("/", ".", "~")) or name.count("/") != 1 or not all(name.split("/")):
        raise FileNotFoundError(
            f"track.hub_repo: {repo!r} is neither an existing local directory nor a GitHub 'owner/name[:ref]'"
        )
    return repo, "github"


def _unwrap_state(state: Any) -> dict:
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict):
        raise ValueError(f"checkpoint does not hold a state dict (got {type(state).__name__})")
    return {k[len("module.") :] if k.startswith("module.") else k: v for k, v in state.items()}


def load_cotracker_predictor(
    variant: str, hub_repo: str = "facebookresearch/co-tracker", checkpoint: Optional[str] = None, device: str = "auto"
):
    """Build CoTracker3's predictor through torch.hub and load local weights.

    Weights are resolved first (``checkpoint`` or the model cache), so a missing file fails with
    :class:`pipeline.models.MissingWeightsError` before anything is fetched. The hub entry points
    ``cotracker3_offline`` / ``cotracker3_online`` return ``CoTrackerPredictor`` /
    ``CoTrackerOnlinePredictor`` wrappers whose ``.model`` holds the network; hubconf itself loads
    the published state dicts into ``predictor.model`` exactly this way.
    """
    if variant not in ("offline", "online"):
        raise ValueError(f"CoTracker3 variant must be 'offline' or 'online', got {variant!r}")
    import torch

    from vid2pair.core.weights import resolve_weights

    entry = f"cotracker3_{variant}"
    ckpt = Path(resolve_weights(entry, explicit=checkpoint, config_key="track.checkpoint"))
    repo, source = _hub_source(hub_repo)
    kwargs = {"trust_repo": True} if source == "github" else {}
    predictor = torch.hub.load(repo, entry, pretrained=False, source=source, **kwargs)
    state = _unwrap_state(torch.load(str(ckpt), map_location="cpu", weights_only=True))
    getattr(predictor, "model", predictor).load_state_dict(state)
    predictor = predictor.to(resolve_device(device)).eval()
    predictor.vid2pair_weights = ckpt.stem
    return predictor


class CoTrackerTracker:
    """CoTracker3 (offline or online) behind the :class:`Tracker` interface.

    Calling convention (co-tracker ``cotracker/predictor.py``): the video is ``(B, T, 3, H, W)``
    float RGB in ``[0, 255]``; queries ``(B, N, 3)`` rows ``[t, x, y]`` in input-pixel
    coordinates, here ``t = 0`` (the target, since frames arrive reversed). The predictor resizes
    the video to the model resolution (384x512, ``align_corners=True``), scales the queries by
    ``(size_model - 1) / (size_in - 1)`` and the tracks back by the inverse, so inputs and outputs
    are in stored pixels and this adapter does no resizing. It returns tracks ``(B, T, N, 2)``
    ``(x, y)`` and boolean visibility ``(B, T, N)``; the source is ``t = T - 1``.

    * offline: ``predictor(video, queries=q, backward_tracking=False)`` (all queries are on
      frame 0, so backward tracking would change nothing).
    * online: ``predictor(video_chunk=video, is_first_step=True, queries=q)`` registers the
      queries, then ``predictor(video_chunk=video[:, s:s + 2 * step])`` for
      ``s = 0, step, ...`` while ``s < T - step`` (the hub demo's loop); the last call returns
      the tracks of every frame seen.

    ``builder(variant) -> predictor`` replaces :func:`load_cotracker_predictor` (tests use a
    stand-in with known output). ``precision="fp16"`` runs under ``torch.autocast`` on CUDA
    only; on CPU it stays fp32.
    """

    def __init__(
        self,
        variant: str = "offline",
        hub_repo: str = "facebookresearch/co-tracker",
        checkpoint: Optional[str] = None,
        device: str = "auto",
        precision: str = "fp32",
        builder: Optional[Callable[[str], Any]] = None,
    ) -> None:
        import torch

        if variant not in ("offline", "online"):
            raise ValueError(f"CoTracker3 variant must be 'offline' or 'online', got {variant!r}")
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, got {precision!r}")
        self.variant = variant
        self.name = f"cotracker3_{variant}"
        self.device = resolve_device(device)
        self.precision = precision
        if builder is None:
            self.predictor = load_cotracker_predictor(variant, hub_repo, checkpoint, str(self.device))
        else:
            self.predictor = builder(variant)
        tag = getattr(self.predictor, "vid2pair_weights", "custom")
        half = "fp16" if precision == "fp16" and self.device.type == "cuda" else "fp32"
        self.version = f"torch-{torch.__version__}/{self.name}-{tag}/{half}"
        self.last_info: list[dict] = []

    def _autocast(self):
        import torch

        if self.device.type == "cuda" and self.precision == "fp16":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _run(self, video, queries):
        if self.variant == "offline":
            return self.predictor(video, queries=queries, backward_tracking=False)
        t = int(video.shape[1])
        self.predictor(video_chunk=video, is_first_step=True, queries=queries)
        step = int(self.predictor.step)
        if step < 1:
            raise RuntimeError(f"online predictor step must be >= 1, got {step}")
        tracks = vis = None
        for start in range(0, max(t - step, 1), step):
            tracks, vis = self.predictor(video_chunk=video[:, start : start + 2 * step])
        return tracks, vis

    def __call__(self, frames_tgt_to_src, queries_xy) -> tuple[np.ndarray, np.ndarray]:
        import torch

        clips, qs = _batch_inputs(frames_tgt_to_src, queries_xy)
        if len({c.shape for c in clips}) != 1 or len({len(q) for q in qs}) != 1:
            # different sizes / lengths cannot share a batch: one call per clip
            out = [self(c[None], q) for c, q in zip(clips, qs)]
            return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])
        b, t = len(clips), clips[0].shape[0]
        n = len(qs[0])
        video = torch.from_numpy(np.ascontiguousarray(np.stack(clips))).to(self.device)
        video = video.permute(0, 1, 4, 2, 3).float()  # (B, T, 3, H, W), 0..255
        xy = torch.from_numpy(np.ascontiguousarray(np.stack(qs), dtype=np.float32)).to(self.device)
        queries = torch.cat([torch.zeros_like(xy[..., :1]), xy], dim=-1)  # [t=0 (target), x, y]
        with torch.inference_mode(), self._autocast():
            tracks, vis = self._run(video, queries)
        if tracks is None or tuple(tracks.shape[:3]) != (b, t, n) or tuple(vis.shape[:3]) != (b, t, n):
            got = None if tracks is None else tuple(tracks.shape)
            raise RuntimeError(f"{self.name}: expected tracks ({b}, {t}, {n}, 2), got {got}")
        src_xy = tracks[:, t - 1].float().cpu().numpy().astype(np.float32)
        src_vis = vis[:, t - 1].reshape(b, n).cpu().numpy().astype(bool)
        self.last_info = [{} for _ in range(b)]
        return src_xy, src_vis


def make_tracker(cfg: TrackConfig, builder: Optional[Callable[[str], Any]] = None) -> Tracker:
    """The tracker a :class:`TrackConfig` describes."""
    if cfg.backend == "flow_chain":
        return FlowChainTracker(cfg)
    if cfg.backend in ("cotracker3_offline", "cotracker3_online"):
        return CoTrackerTracker(
            cfg.backend.rsplit("_", 1)[1],
            hub_repo=cfg.hub_repo,
            checkpoint=cfg.checkpoint,
            device=cfg.device,
            precision=cfg.precision,
            builder=builder,
        )
    raise ValueError(f"unknown track backend {cfg.backend!r}; choose one of {', '.join(TRACK_BACKENDS)}")


# --------------------------------------------------------------------------------------
# the stage


_DRAG_OVERSAMPLE = 2  # drag candidates drawn per requested point (invisible or inconsistent ones are dropped)


class _Untrackable(Exception):
    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def _check_image(name: str, a: Any, shape: Optional[tuple] = None) -> np.ndarray:
    if not isinstance(a, np.ndarray) or a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        desc = f"{getattr(a, 'shape', None)} {getattr(a, 'dtype', type(a).__name__)}"
        raise _Untrackable("bad_input", f"arrays[{name!r}] must be (H, W, 3) uint8 RGB, got {desc}")
    if shape is not None and a.shape != shape:
        raise _Untrackable("bad_input", f"arrays[{name!r}] is {a.shape}, expected {shape}")
    return a


def _texture(gray: np.ndarray) -> float:
    """Mean absolute intensity gradient (grey levels / px)."""
    g = gray.astype(np.float32)
    return float(np.abs(np.diff(g, axis=0)).mean() + np.abs(np.diff(g, axis=1)).mean()) / 2.0


def _measure_tracks(meta: dict, read) -> dict:
    t = meta.get("track") or {}
    return {
        "track_visible_frac": t.get("visible_frac") if t else None,
        "track_flow_agreement": t.get("flow_agreement") if t else None,
    }


def _plot_tracks(view) -> None:
    view.hist(
        [("visible fraction", view.col("track_visible_frac")), ("flow agreement", view.col("track_flow_agreement"))],
        "tracks",
        "fraction",
    )


def judge_tracks(p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The tracks' rules (their :attr:`~vid2pair.core.stage.Signal.judge`): a visible track agrees with
    the pair's own images. One that moves at least ``quality.min_motion_px`` must match better moved
    than in place, at either end (:func:`~vid2pair.stages.evidence.moved_not_still` with
    ``both_ends``: floor or wall carried along with a passing person or a moved bottle fails) and
    not be plain at both ends (11x11 std under 4 grey levels: the wall a hand's soft shadow crossed
    matches itself moved with the shadow as well as in place), nor look like the still background
    within ``quality.track_lookalike_px`` of its target point
    (:func:`~vid2pair.stages.evidence.looks_like_still`: carpet seen through a dog's curled tail,
    carried along with the tail); one
    that moves less must find the target's patch at its end in the source within
    ``quality.change_thresh`` grey levels (mean over 5x5, exposure fitted: a point on a car that
    drove off, left behind, fails). The others are marked not visible, so the matching supervision
    skips them; the signal stays."""
    a = it.arrays
    if "tracks" not in a or "visibility" not in a:
        return
    tr = np.asarray(a["tracks"], np.float32).reshape(-1, 4)
    vis0 = np.asarray(a["visibility"])
    vis = vis0.reshape(-1) > 0
    if not vis.any():
        return
    t, s = tr[:, :2], tr[:, 2:]
    moving = vis & (np.linalg.norm(t - s, axis=1) >= p.px("min_motion_px"))
    still = vis & ~moving
    bad = np.zeros(len(tr), bool)
    if moving.any():
        m = np.concatenate([s[moving], t[moving]], 1)
        # plain at both ends, a move has no evidence: a still wall that a soft shadow crossed matches
        # itself moved with the shadow as well as in place
        plain = plain_patches(p.comp, s[moving]) & plain_patches(p.tgt, t[moving])
        bad[moving] = ~moved_not_still(p.comp, p.tgt, m, both_ends=True) | plain
        if p.c.track_lookalike_px is not None:
            # ... and it must not look like the still background beside it: then nothing shows that the
            # point was not that background, carried along with the mover
            k = np.flatnonzero(moving & ~bad)
            reach = p.c.track_lookalike_px * frame_scale(p.tgt.shape, "px@240")
            bad[k] |= looks_like_still(p.tgt, p.still_background(), t[k], reach, p.c.track_lookalike_grey)
    if still.any():
        bad[still] = patch_diff(p.comp, s[still], p.tgt, t[still], radius=2) > p.c.change_thresh
    sc["tracks_hidden"] = round(float(bad.sum() / vis.sum()), 4)
    if bad.any():
        v = vis0.reshape(-1).copy()
        v[bad] = 0
        a["visibility"] = v.reshape(vis0.shape)
        meta = it.meta.setdefault("track", {})
        meta["hidden_by_quality"] = int(bad.sum())
        meta["visible_frac"] = round(float((v > 0).mean()), 4)


def track_matches(r, grids) -> dict:
    """Matching attention's supervision from ``tracks.npy`` / ``visibility.npy`` (the trainer's
    :attr:`Signal.matches`): the tracks mapped through the sample's resize / crop, then
    :func:`stages.matching.correspondence_index` per token grid ``(h, w)``."""
    from vid2pair.stages.matching import correspondence_index

    H, W = r.size
    tracks = r.array("tracks.npy").astype(np.float64).reshape(-1, 4)
    vis = r.array("visibility.npy").reshape(-1)
    r.current = "tracks.npy"
    tr = np.concatenate([r.points(tracks[:, :2]), r.points(tracks[:, 2:])], axis=1)
    return {f"match_idx_{h}x{w}": correspondence_index(tr, vis, image_size=(W, H), token_grid=(h, w)) for h, w in grids}


#: what QC measures of the tracks: the visible share and the agreement with the flow (meta["track"])
TRACK_METRICS = Metrics(
    ("track_visible_frac", "track_flow_agreement"),
    _measure_tracks,
    lambda v: None if v["track_visible_frac"] is None else f"tracks visible {_pct(v['track_visible_frac'])}",
    _plot_tracks,
)


class TrackStage(PairStage):
    """Target -> source tracks of a query grid, drag points and the drag mask, per batch of pairs.

    Reads ``arrays`` ``src``, ``tgt``, ``flow`` (src -> tgt; ``flow_bwd`` is not read) and
    ``frames`` (T, H, W, 3) from src to tgt (missing: just ``[src, tgt]``). Writes ``arrays["tracks"]``
    (N, 4) float32 ``[x_tgt, y_tgt, x_src, y_src]``, ``arrays["visibility"]`` (N,) uint8,
    ``arrays["drag_mask"]`` (H, W) uint8 0/255, ``meta["drag"]`` (the drag.json dict) and
    ``meta["track"]`` (backend, version, grid, visible fraction, hops); deletes ``frames``.
    A pair that cannot be tracked becomes a pair-level Reject of stage "track":

    * ``tracker_unavailable`` - the backend could not be built (missing weights / hub repo);
    * ``bad_input`` - missing or malformed arrays, non-finite flow;
    * ``frames_mismatch`` - ``frames`` do not start at ``src`` / contain ``tgt``;
    * ``untrackable`` - the target has no texture (constant frames);
    * ``track_failed`` - the tracker raised;
    * ``too_few_visible`` - fewer than ``track.min_visible_frac`` of the grid visible on the source:
      not a pair reject, the pair goes on without its drag and tracks signals (signal-level rows of
      the rejects table).
    """

    name = "track"
    sections = {"track": TrackConfig, "drag": DragConfig}
    reads = ("src", "tgt", "flow", "frames", "flow_bwd", "flow_bwd_valid", "rematched")
    writes = (
        Member("tracks.npy", "tracks", "npy"),
        Member("visibility.npy", "visibility", "npy"),
        Member("matches.npy", "matches", "npy"),
        Member("drag.json", "drag", "json"),
        Member("drag_mask.png", "drag_mask", "png"),
    )
    signals = (
        Signal(
            "drag",
            ("drag.json", "drag_mask.png"),
            "track.enabled",
            judge=judge_drag,
            panels=("drag_src", "drag_tgt"),
            draw=draw_drag,
            scores=DRAG_SCORES,
            metrics=DRAG_METRICS,
            train=DRAG_INPUT,
        ),
        Signal(
            "tracks",
            ("tracks.npy", "visibility.npy"),
            "track.enabled",
            judge=judge_tracks,
            scores=(Score("tracks_hidden"),),
            metrics=TRACK_METRICS,
            matches=track_matches,
        ),
    )

    @classmethod
    def frames_read(cls, cfg) -> int:
        return cfg.track.max_frames

    @classmethod
    def resources(cls, cfg) -> Optional[Resources]:
        t = cfg.track
        if t.backend == "flow_chain":
            return None  # weight-free chained DIS: CPU, no model, never a GPU
        return Resources(
            actors=1, num_gpus=t.num_gpus, num_cpus=0.25, batch_size=t.batch_size, gpu_key="track.num_gpus"
        )

    @classmethod
    def needs(cls, cfg) -> list[Need]:
        t = cfg.track
        if t.backend == "flow_chain":
            return []
        return [
            Need("weights", t.backend, f"track.backend={t.backend}", path=t.checkpoint, path_key="track.checkpoint")
        ]

    def __init__(self, cfg: Any, tracker: Optional[Tracker] = None) -> None:
        super().__init__(cfg)
        self.tcfg: TrackConfig = cfg.track
        self.dcfg: DragConfig = cfg.drag
        self._tracker = tracker

    @property
    def tracker(self) -> Tracker:
        if self._tracker is None:
            self._tracker = make_tracker(self.tcfg)
        return self._tracker

    # ---------------------------------------------------------------- per pair, before tracking
    def _prepare(self, it: PairItem) -> dict:
        from vid2pair.stages.drag import drag_weights, pick_grid_points, target_side_magnitude

        a = it.arrays
        for k in ("src", "tgt", "flow"):
            if k not in a:
                raise _Untrackable("bad_input", f"arrays[{k!r}] missing")
        src = _check_image("src", a["src"])
        tgt = _check_image("tgt", a["tgt"], src.shape)
        h, w = src.shape[:2]
        flow = np.asarray(a["flow"])
        if flow.shape != (h, w, 2):
            raise _Untrackable("bad_input", f"arrays['flow'] is {flow.shape}, expected {(h, w, 2)}")
        if not np.isfinite(flow).all():
            raise _Untrackable("bad_input", "arrays['flow'] holds NaN/inf")
        frames = a.get("frames")
        if frames is None:
            frames = np.stack([src, tgt])
        frames = np.asarray(frames)
        if frames.ndim != 4 or frames.shape[1:] != src.shape or frames.dtype != np.uint8 or len(frames) < 2:
            raise _Untrackable(
                "bad_input", f"arrays['frames'] must be (T>=2, {h}, {w}, 3) uint8, got {frames.shape} {frames.dtype}"
            )
        if not np.array_equal(frames[0], src):
            raise _Untrackable("frames_mismatch", "frames[0] is not the source image")
        if not np.array_equal(frames[-1], tgt):  # e.g. a target chosen among the frames: cut there
            hit = [j for j in range(len(frames) - 1, 0, -1) if np.array_equal(frames[j], tgt)]
            if not hit:
                raise _Untrackable("frames_mismatch", "the target image is not among the frames")
            frames = frames[: hit[0] + 1]
        idx = subsample_indices(len(frames), self.tcfg.max_frames)
        rev = np.ascontiguousarray(frames[idx][::-1])  # target first: the query frame
        if _texture(to_gray(tgt)) < 0.25:
            raise _Untrackable("untrackable", "the target image has no texture (constant frame?)")
        stride = self.tcfg.grid_stride or auto_grid_stride(h, w)
        grid = query_grid(h, w, stride)
        # forward splat of the pair's own src->tgt flow, not flow_bwd: with chained flow the
        # backward flow is a direct one that fails on large motion (docs/tracking.md)
        mag = target_side_magnitude(flow)
        rng = rng_for(self.cfg.seed, it.key, "drag")
        # over-sample: candidates come in weighted-random order, the first k that survive the
        # visibility and flow checks are kept (dropping some keeps the others' spacing)
        weights = drag_weights(mag, self.dcfg.min_flow_px)
        if a.get("flow_bwd_valid") is not None:  # never on a target pixel whose correspondence is inconsistent
            weights = np.where(np.asarray(a["flow_bwd_valid"], bool), weights, 0.0)
        drag_idx = pick_grid_points(weights, grid, _DRAG_OVERSAMPLE * self.dcfg.k, self.dcfg.min_spacing_px, rng)
        return {
            "frames": rev,
            "grid": grid,
            "drag_idx": drag_idx,
            "stride": stride,
            "mag": mag,
            "flow": flow,
            "size": (w, h),
            "n_frames": int(len(idx)),
        }

    # ---------------------------------------------------------------- per pair, after tracking
    def _finish(self, it: PairItem, prep: dict, xy: np.ndarray, vis: np.ndarray, info: dict) -> Item:
        from vid2pair.stages.drag import add_matches, drag_json, drag_mask, flow_agreement

        w, h = prep["size"]
        grid, di = prep["grid"], prep["drag_idx"]
        matches = self._matches(it, prep) if self.dcfg.matches else None
        ng, nd = len(grid), len(di)
        xy = np.asarray(xy, np.float32)[:ng].copy()  # (padding queries of a batch dropped)
        vis = np.asarray(vis, bool)[:ng] & _inside(xy, h, w)
        n_still, n_unsure, s = 0, 0, np.zeros(ng, bool)
        if self.tcfg.hold_still and ng:
            # a static camera: where nothing changes between source and target, a point stays where it
            # is and is visible; flat, still surfaces (a plain desk) that a chained flow cannot follow
            # are then tracked right
            still = ~still_support(it.arrays["src"], it.arrays["tgt"])
            s = in_mask(still, grid)
            unsure = np.zeros(ng, bool)
            if self.tcfg.hold_still_plain_max_px is not None:
                # the tracker followed the point away from a plain, unchanged spot: a still plain wall
                # the chain leaked onto, or the inside of a plain thing whose outline moved; either way
                # neither answer is shown
                sc = frame_scale(it.arrays["src"].shape, "px@240")
                far = np.linalg.norm(xy - grid, axis=1) > self.tcfg.hold_still_plain_max_px * sc
                # ... between moving outlines: a chained flow drifts on a plain desk beside a mover too
                inside = enclosed_by(~still, grid, max(1, round(_PLAIN_REACH_PX * sc)))
                unsure = s & far & ~in_mask(textured(it.arrays["tgt"]), grid) & inside
            xy[s], vis[s] = grid[s], True
            vis[unsure] = False
            n_still, n_unsure = int((s & ~unsure).sum()), int(unsure.sum())
        rem, bwd = it.arrays.get("rematched"), it.arrays.get("flow_bwd")
        n_rem, on = 0, np.zeros(ng, bool)
        if self.tcfg.follow_rematch and rem is not None and bwd is not None and ng:
            # an object the flow stage re-matched between source and target (stages/rematch.py): its
            # points come from there, wherever the chain through the frames in between lost it
            q = grid.astype(np.float32)
            on = in_mask(np.asarray(rem, bool), q)
            xy[on] = q[on] + sample_field(bwd, q[on])
            vis[on] = _inside(xy[on], h, w)
            n_rem = int(on.sum())
        n_incons = n_klt = 0
        moving = vis & ~s & ~on & (np.linalg.norm(xy - grid, axis=1) >= 1.0)
        bwd_ok = it.arrays.get("flow_bwd_valid")
        if self.tcfg.flow_consistent and bwd_ok is not None and moving.any():
            # the flow stage could not match the target pixel back and forth: something uncovered it
            bad = moving & ~in_mask(np.asarray(bwd_ok, bool), grid)
            vis[bad], moving[bad] = False, False
            n_incons = int(bad.sum())
        if self.tcfg.klt_check and moving.any():
            # two more paths through the frames in between: where Lucas-Kanade, forward from the source
            # point and backward from the target point, disagrees with the tracker both ways, the
            # tracker (and the flow it agrees with) took a look-alike; not for the points of a
            # re-matched object (a checked template match)
            k = np.flatnonzero(moving)
            sc = frame_scale(it.arrays["src"].shape, "px@240")
            bad = klt_contradicts(prep["frames"][::-1], xy[k], grid[k], tol_px=3.0 * sc)
            vis[k[bad]] = False
            n_klt = int(bad.sum())
        g_xy, g_vis = xy, vis
        frac = float(g_vis.mean()) if ng else 0.0
        if frac < self.tcfg.min_visible_frac:  # no drags, no matching supervision; the other signals go on
            for k in ("frames", "rematched"):
                it.arrays.pop(k, None)
            detail = f"{frac:.3f} of {ng} grid points visible < track.min_visible_frac {self.tcfg.min_visible_frac}"
            it.meta["track"] = {"backend": self.tracker.name, "visible_frac": round(frac, 4), "n_points": int(ng)}
            drop_signal(it, "track", "drag", "too_few_visible", detail)
            return drop_signal(it, "track", "tracks", "too_few_visible", detail)
        dt, d_src, d_vis = grid[di], xy[di], vis[di].copy()
        # a drag moves: not a point held still (hold_still), not one the tracker left in place
        d_vis &= np.linalg.norm(d_src - dt, axis=1) >= max(self.dcfg.min_flow_px, 1.0)
        n_vis = int(d_vis.sum())
        if self.dcfg.flow_check_px > 0:
            d_vis &= flow_agreement(prep["flow"], d_src, dt, self.dcfg.flow_check_px)
        d_src, d_tgt = d_src[d_vis][: self.dcfg.k], dt[d_vis][: self.dcfg.k]
        n_matched = 0
        if matches is not None and len(d_src) < self.dcfg.k:
            # sparse, verified correspondences on what changed fill up the drags the tracks left short
            before = len(d_src)
            d_src, d_tgt = add_matches(
                d_src, d_tgt, matches, self.dcfg.k, self.dcfg.min_spacing_px, max(self.dcfg.min_flow_px, 1.0)
            )
            n_matched = len(d_src) - before
        agree = flow_agreement(prep["flow"], g_xy[g_vis], grid[g_vis], max(self.dcfg.flow_check_px, 3.0))
        for k in ("frames", "rematched"):
            it.arrays.pop(k, None)
        it.arrays["tracks"] = np.concatenate([grid, g_xy], axis=1).astype(np.float32)
        it.arrays["visibility"] = g_vis.astype(np.uint8)
        it.arrays["drag_mask"] = drag_mask(
            prep["flow"], prep["mag"], d_src, d_tgt, self.dcfg.min_flow_px, self.dcfg.mask_dilate_px
        )
        it.meta["drag"] = drag_json(d_src, d_tgt, (w, h), self.dcfg.direction)
        tr = self.tracker
        meta = {
            "backend": tr.name,
            "version": tr.version,
            "direction": "tgt->src",
            "grid_stride": int(prep["stride"]),
            "n_points": int(ng),
            "visible_frac": round(frac, 4),
            "n_frames": prep["n_frames"],
            "flow_agreement": round(float(agree.mean()) if len(agree) else 0.0, 4),
            "drag_sampled": int(nd),
            "drag_visible": n_vis,
            "drag_kept": int(len(d_src)),
            "still_points": n_still,
            "still_plain_hidden_points": n_unsure,
            "drag_matched": n_matched,
        }
        if self.tcfg.flow_consistent:
            meta["flow_inconsistent_points"] = n_incons
        if self.tcfg.klt_check:
            meta["klt_contradicted_points"] = n_klt
        if n_rem:
            meta["rematched_points"] = n_rem
        meta.update(info or {})
        it.meta["track"] = meta
        return it

    def _matches(self, it: PairItem, prep: dict) -> np.ndarray:
        """Sparse SIFT matches on what changed, supported by a neighbour or the flow, and followed there
        through the frames in between by Lucas-Kanade (look-alikes match by appearance only); kept in
        ``arrays["matches"]`` as the quality stage's evidence of what moves."""
        src_img, tgt_img = it.arrays["src"], it.arrays["tgt"]
        on = cv2.dilate(still_support(src_img, tgt_img).astype(np.uint8), np.ones((7, 7), np.uint8)) > 0
        sc = frame_scale(src_img.shape, "px@240")
        fr = prep["frames"][::-1]  # source first
        m = coherent_matches(sparse_matches(src_img, tgt_img, on), prep["flow"], radius=40.0 * sc, tol_px=3.0 * sc)
        m = m[klt_verify(fr, m[:, :2], m[:, 2:], tol_px=3.0 * sc)]
        # corners followed in small steps through the frames in between: a deforming hand or body
        k = klt_tracks(fr, on)
        if len(k) and len(m):
            k = k[np.min(np.linalg.norm(k[:, None, :2] - m[None, :, :2], axis=-1), axis=1) > 2.0]
        m = np.concatenate([m, k]).astype(np.float32)
        m = m[moved_not_still(src_img, tgt_img, m)]
        rem = it.arrays.get("rematched")
        if rem is not None and len(m):
            # an object the flow stage re-matched (a checked template match): a match that starts on it
            # and ends far from where the object went took something else (a pen pushing a coin: 154 px
            # off a 120-px move); a turning, bending animal is only roughly rigid (a mouse's tail base
            # matched right 35-47 px off its re-match's 77-94 px move), hence 3/4 of the move
            pred = m[:, :2] + sample_field(prep["flow"], m[:, :2])
            off = np.linalg.norm(pred - m[:, 2:], axis=1) > 3.0 * sc + 0.75 * np.linalg.norm(pred - m[:, :2], axis=1)
            m = m[~(off & in_mask(np.asarray(rem, bool), pred))]
        it.arrays["matches"] = m
        return m

    def _track(self, preps: list[dict]) -> list[tuple[np.ndarray, np.ndarray, dict]]:
        """One tracker call for pairs of equal frame shape; queries padded to a common N."""
        n = max(len(p["grid"]) for p in preps)
        qs = []
        for p in preps:
            q = p["grid"].astype(np.float32)
            if len(q) < n:  # pad with copies of the first query; dropped again below
                q = np.concatenate([q, np.repeat(q[:1], n - len(q), axis=0)])
            qs.append(q)
        xy, vis = self.tracker([p["frames"] for p in preps], np.stack(qs))
        info = list(getattr(self.tracker, "last_info", None) or [])
        info += [{}] * (len(preps) - len(info))
        return [(xy[k], vis[k], info[k]) for k in range(len(preps))]

    def process(self, items: list[PairItem]) -> list[Item]:
        try:
            _ = self.tracker
        except Exception as e:  # missing weights / hub repo: every pair is recorded with the reason
            msg = f"{type(e).__name__}: {e}"[:500]
            return [pair_reject(it, "track", "tracker_unavailable", msg) for it in items]
        out: dict[int, Item] = {}
        groups: dict[tuple, list[tuple[PairItem, dict]]] = {}
        for it in items:
            try:
                prep = self._prepare(it)
                groups.setdefault(prep["frames"].shape, []).append((it, prep))
            except _Untrackable as e:
                out[id(it)] = pair_reject(it, "track", e.reason, e.detail[:500])
            except Exception as e:
                out[id(it)] = pair_reject(it, "track", "bad_input", f"{type(e).__name__}: {e}"[:500])
        bs = max(1, int(self.tcfg.batch_size))
        for members in groups.values():
            for s in range(0, len(members), bs):
                chunk = members[s : s + bs]
                try:
                    results = self._track([p for _, p in chunk])
                except Exception as e:
                    if len(chunk) == 1:
                        it = chunk[0][0]
                        out[id(it)] = pair_reject(it, "track", "track_failed", f"{type(e).__name__}: {e}"[:500])
                        continue
                    results = []
                    for _it, p in chunk:  # isolate the failing pair(s)
                        try:
                            results.append(self._track([p])[0])
                        except Exception as e1:
                            results.append(e1)
                for (it, p), res in zip(chunk, results):
                    if isinstance(res, Exception):
                        out[id(it)] = pair_reject(it, "track", "track_failed", f"{type(res).__name__}: {res}"[:500])
                        continue
                    try:
                        out[id(it)] = self._finish(it, p, *res)
                    except Exception as e:
                        out[id(it)] = pair_reject(it, "track", "track_failed", f"{type(e).__name__}: {e}"[:500])
        return [out[id(it)] for it in items]
