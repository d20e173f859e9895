"""Synthetic video clips with exact ground truth (flow, point tracks, object masks).

Used by the tests and by ``vid2pair demo``. A clip is a stack of layers composited back to
front:

* a static textured background (multi-scale smooth noise plus soft blobs, so that optical
  flow has texture everywhere), seen through an optional moving camera;
* ``N`` textured objects (rectangles / ellipses with their own texture), each moving with a
  known rigid motion (translation px/frame, rotation deg/frame, multiplicative scale rate).
  Objects have a fixed z-order: object ``k`` (1-based label) is drawn over objects ``< k``.

Coordinates
-----------
Pixel ``(x, y)`` means column ``x``, row ``y``; integer coordinates are pixel centres (the
OpenCV convention). "World" coordinates coincide with image coordinates of frame 0 when the
camera does not move. Every layer ``L`` has, per frame ``t``, an affine map ``T_L(t)`` from
its own texture coordinates to image coordinates; the frame is rendered by sampling each
texture with exactly that map (``cv2.warpAffine`` + bilinear), so the ground-truth motion of
a point of layer ``L`` from frame ``i`` to frame ``j`` is ``T_L(j) @ inv(T_L(i))`` exactly.

Camera
------
``CameraMotion.velocity`` is the camera's own pan in px/frame: the background therefore
appears to move by ``-velocity`` per frame. ``jitter`` adds a smooth (low-pass filtered)
handheld shake with that translation std in px; ``rotation_jitter`` (deg) and
``zoom_jitter`` (relative) add rotation/zoom shake, and ``angular_velocity`` / ``zoom_rate``
give a steady roll / zoom. The background canvas is rendered larger than the frame, so no
black borders ever appear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Optional, Sequence, Union

import cv2
import numpy as np

__all__ = [
    "ObjectSpec",
    "CameraMotion",
    "SyntheticClip",
    "make_clip",
    "write_video",
    "make_demo_corpus",
    "noise_texture",
]


@dataclass
class ObjectSpec:
    """One rigid textured object.

    ``size`` is ``(width, height)`` in px at frame 0; ``center`` is ``(x, y)`` at frame 0 in
    world coordinates; ``velocity`` px/frame; ``angular_velocity`` deg/frame (positive turns
    clockwise on screen, since y points down); ``scale_rate``: the size is multiplied by
    ``(1 + scale_rate)`` every frame; ``angle`` the initial rotation in degrees.
    """

    shape: str  # "rect" | "ellipse"
    size: tuple[int, int]
    center: tuple[float, float]
    velocity: tuple[float, float] = (0.0, 0.0)
    angular_velocity: float = 0.0
    scale_rate: float = 0.0
    texture_seed: int = 0
    angle: float = 0.0

    def __post_init__(self) -> None:
        if self.shape not in ("rect", "ellipse"):
            raise ValueError(f"ObjectSpec.shape must be 'rect' or 'ellipse', got {self.shape!r}")
        if min(self.size) < 2:
            raise ValueError(f"ObjectSpec.size must be at least 2x2 px, got {self.size}")


@dataclass
class CameraMotion:
    """Global camera motion; see the module docstring for the sign convention."""

    velocity: tuple[float, float] = (0.0, 0.0)  # camera pan, px/frame (scene moves by -velocity)
    jitter: float = 0.0  # px std of the handheld translation shake
    rotation_jitter: float = 0.0  # deg std of the roll shake
    zoom_jitter: float = 0.0  # relative std of the zoom shake (0.01 = 1 %)
    angular_velocity: float = 0.0  # steady roll, deg/frame
    zoom_rate: float = 0.0  # steady zoom: scale multiplied by (1 + zoom_rate) per frame
    seed: Optional[int] = None  # shake seed; None: derived from the clip seed

    @property
    def is_static(self) -> bool:
        return (
            self.velocity[0] == 0
            and self.velocity[1] == 0
            and self.jitter == 0
            and self.rotation_jitter == 0
            and self.zoom_jitter == 0
            and self.angular_velocity == 0
            and self.zoom_rate == 0
        )


# --------------------------------------------------------------------------------------
# small affine helpers (3x3 homogeneous matrices)


def _translate(tx: float, ty: float) -> np.ndarray:
    return np.array([[1.0, 0.0, tx], [0.0, 1.0, ty], [0.0, 0.0, 1.0]])


def _rot_scale(angle_deg: float, scale: float) -> np.ndarray:
    a = math.radians(angle_deg)
    c, s = math.cos(a) * scale, math.sin(a) * scale
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to (..., 2) points."""
    return pts @ m[:2, :2].T + m[:2, 2]


# --------------------------------------------------------------------------------------
# textures


def noise_texture(
    height: int,
    width: int,
    seed: int,
    *,
    octaves: Sequence[int] = (3, 6, 12, 24, 48),
    n_blobs: int = 0,
    palette: Optional[np.ndarray] = None,
    chroma_min_cell: int = 24,
) -> np.ndarray:
    """Deterministic multi-scale smooth colour noise, (H, W, 3) float32 in [0, 255].

    ``octaves`` are feature sizes in px (random grids upsampled bicubically); each octave has
    roughly the same amplitude so there is texture at every scale. Octaves finer than
    ``chroma_min_cell`` only vary the brightness (like natural images, whose colour is
    smoother than their luminance; this also keeps yuv420p chroma subsampling nearly
    lossless). ``n_blobs`` soft coloured discs are added on top. ``palette`` (2, 3) maps the
    noise between two colours, giving each texture a distinct tint.
    """
    rng = np.random.default_rng(seed)
    acc = np.zeros((height, width, 3), np.float32)
    for cell in octaves:
        gh, gw = height // cell + 3, width // cell + 3
        chans = 3 if cell >= chroma_min_cell else 1
        grid = rng.standard_normal((gh, gw, chans)).astype(np.float32)
        up = cv2.resize(grid, (gw * cell, gh * cell), interpolation=cv2.INTER_CUBIC)
        if up.ndim == 2:
            up = up[..., None]
        oy, ox = rng.integers(0, cell, size=2)
        acc += up[oy : oy + height, ox : ox + width]
    acc /= math.sqrt(len(octaves))
    if n_blobs:
        blobs = np.zeros_like(acc)
        for _ in range(n_blobs):
            r = float(rng.uniform(0.03, 0.12) * min(height, width))
            cx, cy = rng.uniform(0, width), rng.uniform(0, height)
            col = rng.uniform(-2.0, 2.0, size=3)
            cv2.circle(blobs, (int(cx), int(cy)), int(r), tuple(float(c) for c in col), -1, cv2.LINE_AA)
        blobs = cv2.GaussianBlur(blobs, (0, 0), 3.0)
        acc += blobs
    # normalise to [0, 1] robustly
    lo, hi = np.percentile(acc, [1, 99])
    t = np.clip((acc - lo) / max(hi - lo, 1e-6), 0.0, 1.0)
    if palette is None:
        out = 20.0 + 215.0 * t
    else:
        pal = np.asarray(palette, np.float32)
        out = pal[0] + (pal[1] - pal[0]) * t
    return out.astype(np.float32)


def _object_texture(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(10_000 + seed)
    base = rng.uniform(70, 185, size=3)
    spread = rng.uniform(90, 130)  # one scalar: fine texture is brightness only, the tint stays flat
    palette = np.stack([np.clip(base - spread / 2, 0, 255), np.clip(base + spread / 2, 0, 255)])
    cell = max(8, min(w, h) // 6)
    return noise_texture(
        h, w, seed=20_000 + seed, octaves=(2, 4, 8, cell, 2 * cell), palette=palette, chroma_min_cell=16
    )


# --------------------------------------------------------------------------------------
# the clip


@dataclass
class _Layer:
    texture: np.ndarray  # (h, w, 3) float32
    mats: np.ndarray  # (T, 3, 3) texture coords -> image coords
    spec: Optional[ObjectSpec] = None  # None for the background
    half: tuple[float, float] = (0.0, 0.0)  # half width / height of the shape (texture units)
    centre: tuple[float, float] = (0.0, 0.0)  # shape centre in texture coords


@dataclass
class SyntheticClip:
    """A rendered clip plus the exact scene description needed for ground truth."""

    frames: np.ndarray  # (T, H, W, 3) uint8 RGB
    fps: float
    objects: list[ObjectSpec]
    camera: CameraMotion
    seed: int
    _background: _Layer = field(repr=False)
    _layers: list[_Layer] = field(repr=False)  # objects, z-order (index k-1 for label k)
    _cam: np.ndarray = field(repr=False)  # (T, 3, 3) world -> image

    # ---------------------------------------------------------------- basic properties
    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    def layer_matrix(self, label: int, t: int) -> np.ndarray:
        """3x3 affine: texture coords of layer ``label`` (0 = background) -> image coords at frame t."""
        layer = self._background if label == 0 else self._layers[label - 1]
        return layer.mats[t].copy()

    def camera_matrix(self, t: int) -> np.ndarray:
        """3x3 affine: world coords -> image coords at frame ``t``."""
        return self._cam[t].copy()

    # ---------------------------------------------------------------- geometry
    def _inside(self, label: int, t: int, pts: np.ndarray) -> np.ndarray:
        """Whether image points (N, 2) lie inside object ``label`` at frame ``t`` (hard test)."""
        layer = self._layers[label - 1]
        inv = np.linalg.inv(layer.mats[t])
        uv = _apply(inv, pts) - np.asarray(layer.centre)
        hw, hh = layer.half
        if layer.spec.shape == "rect":
            return (np.abs(uv[:, 0]) <= hw) & (np.abs(uv[:, 1]) <= hh)
        return (uv[:, 0] / hw) ** 2 + (uv[:, 1] / hh) ** 2 <= 1.0

    def _labels_at(self, t: int, pts: np.ndarray) -> np.ndarray:
        lab = np.zeros(len(pts), np.int32)
        for k in range(1, len(self._layers) + 1):  # later objects overwrite: they are on top
            lab[self._inside(k, t, pts)] = k
        return lab

    def _correspond(self, pts: np.ndarray, i: int, j: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pts = np.asarray(pts, np.float64).reshape(-1, 2)
        labels = self._labels_at(i, pts)
        out = np.empty_like(pts)
        vis = np.ones(len(pts), bool)
        for lab in np.unique(labels):
            sel = labels == lab
            m = self.layer_matrix(lab, j) @ np.linalg.inv(self.layer_matrix(lab, i))
            q = _apply(m, pts[sel])
            out[sel] = q
            v = np.ones(len(q), bool)
            # occluded by any object above this layer at frame j
            for k in range(lab + 1, len(self._layers) + 1):
                v &= ~self._inside(k, j, q)
            vis[sel] = v
        inside = (out[:, 0] >= 0) & (out[:, 0] <= self.width - 1) & (out[:, 1] >= 0) & (out[:, 1] <= self.height - 1)
        return out, vis & inside, labels

    def _grid(self) -> np.ndarray:
        ys, xs = np.mgrid[0 : self.height, 0 : self.width]
        return np.stack([xs.ravel(), ys.ravel()], axis=1).astype(np.float64)

    # ---------------------------------------------------------------- public ground truth
    def flow(self, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Ground-truth flow from frame ``i`` to frame ``j``.

        Returns ``(flow, visible)``: ``flow`` (H, W, 2) float32 with ``flow[y, x] = (dx, dy)``
        such that the scene point at pixel (x, y) of frame i is at (x+dx, y+dy) in frame j;
        ``visible`` (H, W) bool, False where that point is occluded in frame j or leaves the
        frame. The owner of each pixel is the topmost layer whose shape contains the pixel
        centre (anti-aliased edge pixels are a blend and have no exact flow).
        """
        self._check_index(i)
        self._check_index(j)
        grid = self._grid()
        q, vis, _ = self._correspond(grid, i, j)
        flow = (q - grid).reshape(self.height, self.width, 2).astype(np.float32)
        return flow, vis.reshape(self.height, self.width)

    def track(self, points_xy: np.ndarray, i: int, j: int) -> tuple[np.ndarray, np.ndarray]:
        """Positions in frame ``j`` (N, 2) float32 of points (N, 2) given in frame ``i``, plus visibility (N,)."""
        self._check_index(i)
        self._check_index(j)
        q, vis, _ = self._correspond(points_xy, i, j)
        return q.astype(np.float32), vis

    def object_masks(self, i: int) -> np.ndarray:
        """(H, W) int32 label map of frame ``i``: 0 = background, k = k-th object (topmost wins)."""
        self._check_index(i)
        return self._labels_at(i, self._grid()).reshape(self.height, self.width)

    def _check_index(self, i: int) -> None:
        if not -self.n_frames <= i < self.n_frames:
            raise IndexError(f"frame index {i} out of range for a clip of {self.n_frames} frames")


# --------------------------------------------------------------------------------------
# construction


def _smooth_noise(rng: np.random.Generator, n: int, dims: int, sigma_frames: float) -> np.ndarray:
    """(n, dims) low-pass random signal with unit std per dimension."""
    pad = int(4 * sigma_frames) + 1
    raw = rng.standard_normal((n + 2 * pad, dims))
    k = np.exp(-0.5 * (np.arange(-pad, pad + 1) / sigma_frames) ** 2)
    k /= k.sum()
    out = np.stack([np.convolve(raw[:, d], k, mode="valid") for d in range(dims)], axis=1)[:n]
    std = out.std(axis=0)
    std[std < 1e-9] = 1.0
    return (out - out.mean(axis=0)) / std


def _camera_mats(cam: CameraMotion, n: int, width: int, height: int, seed: int) -> np.ndarray:
    """(n, 3, 3) world -> image. Rotation / zoom are about the image centre."""
    rng = np.random.default_rng(cam.seed if cam.seed is not None else 7_777 + seed)
    shake = _smooth_noise(rng, n, 4, sigma_frames=2.0) if n > 1 else np.zeros((n, 4))
    c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
    mats = np.empty((n, 3, 3))
    for t in range(n):
        pos = np.asarray(cam.velocity, float) * t + cam.jitter * shake[t, :2]
        ang = cam.angular_velocity * t + cam.rotation_jitter * shake[t, 2]
        scl = (1.0 + cam.zoom_rate) ** t * (1.0 + cam.zoom_jitter * shake[t, 3])
        # image = C + S R (world - C - pos)
        mats[t] = _translate(*c) @ _rot_scale(ang, scl) @ _translate(*(-c - pos))
    return mats


def _object_mats(spec: ObjectSpec, n: int, centre_tex: np.ndarray) -> np.ndarray:
    """(n, 3, 3) object texture coords -> world coords."""
    mats = np.empty((n, 3, 3))
    base = 1.0 + spec.scale_rate
    if base <= 0:
        raise ValueError(f"scale_rate must be > -1, got {spec.scale_rate}")
    for t in range(n):
        pos = np.asarray(spec.center, float) + np.asarray(spec.velocity, float) * t
        rot = _rot_scale(spec.angle + spec.angular_velocity * t, base**t)
        mats[t] = _translate(*pos) @ rot @ _translate(*(-centre_tex))
    return mats


def random_objects(n: int, width: int, height: int, n_frames: int, seed: int) -> list[ObjectSpec]:
    """``n`` random objects whose paths pass near the frame centre at mid-clip; 1-3 px/frame."""
    rng = np.random.default_rng(1_000 + seed)
    objs = []
    short = min(width, height)
    for _k in range(n):
        w = int(rng.uniform(0.18, 0.38) * short)
        h = int(rng.uniform(0.18, 0.38) * short)
        speed = rng.uniform(1.0, 3.0)
        ang = rng.uniform(0, 2 * math.pi)
        vel = (speed * math.cos(ang), speed * math.sin(ang))
        mid = (rng.uniform(0.3, 0.7) * width, rng.uniform(0.3, 0.7) * height)
        t_mid = (n_frames - 1) / 2.0
        centre = (mid[0] - vel[0] * t_mid, mid[1] - vel[1] * t_mid)
        objs.append(
            ObjectSpec(
                shape="rect" if rng.random() < 0.5 else "ellipse",
                size=(w, h),
                center=centre,
                velocity=vel,
                angular_velocity=float(rng.uniform(-1.0, 1.0)),
                scale_rate=float(rng.uniform(-0.004, 0.004)),
                texture_seed=int(rng.integers(0, 2**31 - 1)),
                angle=float(rng.uniform(-20, 20)),
            )
        )
    return objs


def _coverage(layer: _Layer, mat_img: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (H, W) float32 of an object's shape: 1 px wide linear ramp."""
    inv = np.linalg.inv(mat_img)
    u = inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2] - layer.centre[0]
    v = inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2] - layer.centre[1]
    scale = math.sqrt(abs(np.linalg.det(mat_img[:2, :2])))  # texture px -> image px
    hw, hh = layer.half
    if layer.spec.shape == "rect":
        sd = np.maximum(np.abs(u) - hw, np.abs(v) - hh) * scale
    else:
        f = (u / hw) ** 2 + (v / hh) ** 2 - 1.0
        g = np.sqrt((2 * u / hw**2) ** 2 + (2 * v / hh**2) ** 2) + 1e-6
        sd = f / g * scale
    return np.clip(0.5 - sd, 0.0, 1.0).astype(np.float32)


def make_clip(
    *,
    width: int = 320,
    height: int = 240,
    n_frames: int = 48,
    fps: float = 12.0,
    objects: Optional[list[ObjectSpec]] = None,
    n_objects: int = 2,
    camera: Optional[CameraMotion] = None,
    seed: int = 0,
) -> SyntheticClip:
    """Render a synthetic clip. ``objects=None`` draws ``n_objects`` random objects from ``seed``."""
    if width < 8 or height < 8 or n_frames < 1:
        raise ValueError("make_clip needs width, height >= 8 and n_frames >= 1")
    camera = camera or CameraMotion()
    if objects is None:
        objects = random_objects(n_objects, width, height, n_frames, seed)
    objects = list(objects)

    cam = _camera_mats(camera, n_frames, width, height, seed)

    # background canvas: cover every frame's footprint in world coords (+ a margin for bilinear)
    corners = np.array([[0, 0], [width - 1, 0], [0, height - 1], [width - 1, height - 1]], float)
    world = np.concatenate([_apply(np.linalg.inv(m), corners) for m in cam])
    margin = 4
    x0, y0 = np.floor(world.min(axis=0)) - margin
    x1, y1 = np.ceil(world.max(axis=0)) + margin
    cw, ch = int(x1 - x0) + 1, int(y1 - y0) + 1
    bg_tex = noise_texture(ch, cw, seed=seed, n_blobs=max(4, (cw * ch) // 4000))
    bg = _Layer(texture=bg_tex, mats=cam @ _translate(x0, y0))

    layers = []
    for spec in objects:
        ow, oh = int(spec.size[0]), int(spec.size[1])
        pad = 3  # texture beyond the shape so edge samples are real texture
        tex = _object_texture(ow + 2 * pad, oh + 2 * pad, spec.texture_seed)
        centre = np.array([(ow + 2 * pad - 1) / 2.0, (oh + 2 * pad - 1) / 2.0])
        mats = cam @ _object_mats(spec, n_frames, centre)
        layers.append(
            _Layer(
                texture=tex,
                mats=mats,
                spec=spec,
                half=(ow / 2.0, oh / 2.0),
                centre=(float(centre[0]), float(centre[1])),
            )
        )

    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    frames = np.empty((n_frames, height, width, 3), np.uint8)
    for t in range(n_frames):
        img = cv2.warpAffine(
            bg.texture, bg.mats[t][:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
        )
        for layer in layers:
            m = layer.mats[t]
            cov = _coverage(layer, m, xs, ys)
            if not cov.any():
                continue
            col = cv2.warpAffine(
                layer.texture, m[:2], (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT101
            )
            a = cov[..., None]
            img = img * (1.0 - a) + col * a
        frames[t] = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    clip = SyntheticClip(
        frames=frames,
        fps=float(fps),
        objects=objects,
        camera=camera,
        seed=seed,
        _background=bg,
        _layers=layers,
        _cam=cam,
    )
    return clip


# --------------------------------------------------------------------------------------
# video files


def write_video(frames: np.ndarray, path: Union[str, Path], fps: float, codec: str = "libx264", crf: int = 12) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames to an mp4 (yuv420p) with PyAV.

    ``codec``: ``"libx264"`` (``crf`` controls quality; 12 is near-lossless) or ``"mpeg4"``
    (fixed quantiser 2, the best MPEG-4 part 2 quality; ``crf`` is ignored). H and W must be
    even (yuv420p). The frames fed to the encoder are reproducible; libx264's bitstream usually is
    too, but identical encodes occasionally differed here (encoder noise, decoded > 40 dB apart).
    """
    import av  # local: only the video writer needs PyAV

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"write_video expects (T, H, W, 3) uint8 frames, got {frames.shape} {frames.dtype}")
    t, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"yuv420p needs even frame sizes, got {w}x{h}")
    if codec not in ("libx264", "mpeg4"):
        raise ValueError(f"codec must be 'libx264' or 'mpeg4', got {codec!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rate = Fraction(fps).limit_denominator(1001)
    with av.open(str(path), mode="w") as container:
        if codec == "libx264":
            stream = container.add_stream("libx264", rate=rate, options={"crf": str(int(crf)), "preset": "medium"})
        else:
            stream = container.add_stream("mpeg4", rate=rate)
            stream.codec_context.qscale = 2  # type: ignore[attr-defined]
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        for i in range(t):
            # Convert to I420 ourselves (BT.601 limited range, what decoders assume for untagged
            # streams): PyAV's implicit rgb24 -> yuv420p path made libx264 output vary from run
            # to run, while this path is byte-for-byte reproducible.
            yuv = cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2YUV_I420)
            frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
            # explicit timestamps: frame i at i / fps
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_shots_video(
    path: Union[str, Path],
    n_shots: int,
    width: int = 320,
    height: int = 240,
    shot_s: float = 3.0,
    fps: float = 12.0,
    seed: int = 1000,
) -> Path:
    """A long clip: ``n_shots`` static-camera shots of ``shot_s`` seconds, one moving object each
    (shot k drawn from ``seed + k``), hard cuts between. Shots are rendered and encoded one at a
    time (libx264, crf 18), so a long clip never sits in memory."""
    path = Path(path)
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(round(shot_s * fps))
    with av.open(str(path), mode="w") as c:
        st = c.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001), options={"crf": "18"})
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        pts = 0
        for k in range(n_shots):
            for f in make_clip(width=width, height=height, n_frames=n, fps=fps, n_objects=1, seed=seed + k).frames:
                fr = av.VideoFrame.from_ndarray(cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420), format="yuv420p")
                fr.pts = pts
                pts += 1
                for p in st.encode(fr):
                    c.mux(p)
        for p in st.encode():
            c.mux(p)
    return path


def make_demo_corpus(
    out_dir: Union[str, Path], n_static: int = 4, n_moving_camera: int = 1, seed: int = 0, **kw
) -> list[Path]:
    """Write a small deterministic corpus of synthetic mp4 clips and return their paths.

    ``static_XX.mp4``: fixed camera, 1-3 moving objects. ``camera_pan_XX.mp4``: the same kind
    of scene filmed by a panning, shaking camera. Defaults: 320x240, 12 fps, 60 frames (5 s);
    ``kw`` is forwarded to :func:`make_clip` (``width``, ``height``, ``n_frames``, ``fps``, ...)
    and may also carry ``codec`` / ``crf`` for :func:`write_video`.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    codec = kw.pop("codec", "libx264")
    crf = kw.pop("crf", 12)
    params = dict(width=320, height=240, n_frames=60, fps=12.0)
    params.update(kw)
    n_objects = params.pop("n_objects", None)
    rng = np.random.default_rng(seed)
    paths = []
    for k in range(n_static):
        s = int(rng.integers(0, 2**31 - 1))
        n_obj = n_objects or 1 + k % 3
        clip = make_clip(**params, n_objects=n_obj, seed=s)
        paths.append(write_video(clip.frames, out_dir / f"static_{k:02d}.mp4", clip.fps, codec=codec, crf=crf))
    for k in range(n_moving_camera):
        s = int(rng.integers(0, 2**31 - 1))
        ang = rng.uniform(0, 2 * math.pi)
        speed = rng.uniform(1.5, 3.0)
        cam = CameraMotion(
            velocity=(speed * math.cos(ang), speed * math.sin(ang)), jitter=1.5, rotation_jitter=0.3, zoom_jitter=0.005
        )
        n_obj = n_objects or 1 + k % 2
        clip = make_clip(**params, n_objects=n_obj, camera=cam, seed=s)
        paths.append(write_video(clip.frames, out_dir / f"camera_pan_{k:02d}.mp4", clip.fps, codec=codec, crf=crf))
    return paths


# --------------------------------------------------------------------------------------
# a decoding corpus: the stream shapes that break seeking

#: name -> (codec, pixel format, codec options, what it exercises)
DECODE_CORPUS = {
    "long_gop_bpyramid.mp4": (
        "libx264",
        "yuv420p",
        {"x264-params": "keyint=96:min-keyint=96:scenecut=0:bframes=3:b-pyramid=normal"},
        "a keyframe every 4 s, B-frames referenced by B-frames",
    ),
    "open_gop.mkv": (
        "libx264",
        "yuv420p",
        {"x264-params": "keyint=48:min-keyint=48:scenecut=0:bframes=3:open-gop=1"},
        "open GOPs: B-frames before a keyframe reference the GOP before it",
    ),
    "x264_444.mp4": (
        "libx264",
        "yuv444p",
        {"x264-params": "keyint=48:min-keyint=48:scenecut=0:bframes=2"},
        "h264 High 4:4:4 Predictive",
    ),
    "x264_10bit.mp4": (
        "libx264",
        "yuv420p10le",
        {"x264-params": "keyint=48:min-keyint=48:scenecut=0:bframes=3"},
        "h264 High 10",
    ),
    "hevc_10bit.mp4": (
        "libx265",
        "yuv420p10le",
        {"x265-params": "keyint=48:min-keyint=48:bframes=4:log-level=none"},
        "HEVC Main 10 with B-frames",
    ),
    "vp9_altref.webm": (
        "libvpx-vp9",
        "yuv420p",
        {"auto-alt-ref": "1", "lag-in-frames": "16", "g": "48", "deadline": "realtime", "cpu-used": "8"},
        "VP9 with hidden alt-ref frames",
    ),
    "mpeg4_bframes.avi": ("mpeg4", "yuv420p", {}, "MPEG-4 part 2 with B-frames in AVI"),
    "vfr.mkv": (
        "libx264",
        "yuv420p",
        {"x264-params": "keyint=48:bframes=2"},
        "variable frame rate: frame durations of 25-60 ms",
    ),
    "start_offset.mp4": (
        "libx264",
        "yuv420p",
        {"x264-params": "keyint=48:bframes=3"},
        "the first frame at 2 s: an edit list / start offset",
    ),
    "usec_timebase.mp4": ("libx264", "yuv420p", {"x264-params": "keyint=72:bframes=3"}, "a time base of 1/1,000,000"),
    "intra_refresh.mp4": (
        "libx264",
        "yuv420p",
        {"x264-params": "intra-refresh=1:keyint=48:bframes=0"},
        "no IDR after the first frame: periodic intra refresh, recovery points flagged as keyframes",
    ),
    "lying_keyframes.mp4": (
        "libx264",
        "yuv420p",
        {"x264-params": "keyint=96:min-keyint=96:scenecut=0:bframes=3"},
        "every 10th non-key packet listed as a sync sample (mp4 stss)",
    ),
}


def write_decode_corpus(
    out_dir: Union[str, Path],
    width: int = 320,
    height: int = 240,
    seconds: float = 8.0,
    fps: float = 24.0,
    seed: int = 5,
    names: Optional[Sequence[str]] = None,
) -> list[Path]:
    """Encode one synthetic scene (two moving textured objects on a still background) in each
    stream shape of :data:`DECODE_CORPUS` (or those in ``names``); returns the paths. Every frame
    differs from its neighbours, so a wrong frame is visible."""
    import av

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    n = int(round(seconds * fps))
    frames = make_clip(width=width, height=height, n_frames=n, fps=fps, n_objects=2, seed=seed).frames
    rng = np.random.default_rng(seed)
    durations = rng.integers(25, 61, n)  # ms, for the variable-frame-rate file
    paths = []
    for name in names or DECODE_CORPUS:
        codec, pix, opts, _ = DECODE_CORPUS[name]
        path = out_dir / name
        target = out_dir / f"_keyed_{name}" if name == "lying_keyframes.mp4" else path
        with av.open(str(target), mode="w") as c:
            st = c.add_stream(codec, rate=Fraction(fps).limit_denominator(1001), options=dict(opts))
            st.width, st.height, st.pix_fmt = width, height, pix
            if codec == "mpeg4":
                st.codec_context.max_b_frames = 2
                st.codec_context.gop_size = 48
                st.codec_context.qscale = 2  # type: ignore[attr-defined]
            if name == "vfr.mkv":
                st.codec_context.time_base = Fraction(1, 1000)
            if name == "usec_timebase.mp4":
                st.time_base = Fraction(1, 1_000_000)
            t = 0
            for i in range(n):
                fr = av.VideoFrame.from_ndarray(frames[i], format="rgb24").reformat(format=pix)
                if name == "vfr.mkv":
                    fr.pts, t = t, t + int(durations[i])
                else:
                    fr.pts = i + (int(round(2 * fps)) if name == "start_offset.mp4" else 0)
                for p in st.encode(fr):
                    c.mux(p)
            for p in st.encode():
                c.mux(p)
        if name == "lying_keyframes.mp4":
            _remux_with_false_keyframes(target, path, every=10)
            target.unlink()
        paths.append(path)
    return paths


def _remux_with_false_keyframes(src: Path, dst: Path, every: int = 10) -> None:
    """Copy ``src``'s video packets into ``dst`` with every ``every``-th non-key packet flagged as a
    keyframe (a container whose keyframe index lies)."""
    import av

    with av.open(str(src)) as i, av.open(str(dst), mode="w") as o:
        ist = i.streams.video[0]
        ost = o.add_stream_from_template(ist)
        k = 0
        for p in i.demux(ist):
            if p.dts is None:
                continue
            if not p.is_keyframe:
                k += 1
                if k % every == 0:
                    p.is_keyframe = True
            p.stream = ost
            o.mux(p)
