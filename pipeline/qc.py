"""Quality control: look at an output's pairs before training on them.

One module for everything visual, shared by ``vid2pair report`` (pipeline/report.py, one HTML file),
``vid2pair inspect --key`` (:func:`inspect_key`, a contact sheet PNG) and ``notebooks/qc.ipynb``.

* **Data access** (:class:`QCDataset`): the index says which shard holds a key, so loading a sample
  reads only that shard, and only up to that sample's members (samples are contiguous in a shard;
  the walk stops once every wanted key has been read). Random samples with a seed, filters by key,
  clip and metric range (any index column, e.g. ``flow_p90``, or a meta-derived one from
  :data:`META_METRICS`, e.g. ``coarse_hole_frac``).
* **Overview**: the run summary as a table, reject reasons per stage (bar chart + table with an
  example of each), which signals the samples carry, and histograms (Δt, flow magnitude, moving
  fraction, static-camera score, drag lengths, hole fractions, sketch density, region-drag types,
  track quality). Figures are plain :class:`matplotlib.figure.Figure` objects (no pyplot state);
  :func:`fig_to_png` encodes one.
* **Gallery**: per pair, labelled panels (:data:`PANELS`): source, target, flow, the sketch on the
  target, the drags on the source and on the target, the coarse edit and the collage with their
  holes tinted, the region drags with their operation type. A signal the sample does not have is a
  labelled placeholder saying what is missing (never an exception).
* **Drawing** functions work on RGB uint8 arrays in the pixel-centre convention of the rest of the
  pipeline (integer ``(x, y)`` = centre of column x, row y) and draw exactly at the given points.
"""

from __future__ import annotations

import io
import json
import math
import random
import tarfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from vid2pair.pipeline.plan import signals as plan_signals
from vid2pair.stages.encode import encode_image as _encode_image

# ---------------------------------------------------------------- constants

#: signal -> (its sample members, the config switch that turns it off): from the stage declarations
SIGNALS: dict[str, tuple[tuple[str, ...], str]] = {n: (s.members, s.switch) for n, s in plan_signals().items()}

#: gallery panels, in order
PANELS: tuple[str, ...] = (
    "source",
    "target",
    "flow",
    "drag_src",
    "drag_tgt",
    "sketch",
    "coarse",
    "collage",
    "region_drag",
)

#: metrics read from the samples' meta.json / drag.json / region_drag.json (not in the index)
META_METRICS: tuple[str, ...] = (
    "coarse_hole_frac",
    "coarse_coverage",
    "collage_hole_frac",
    "collage_n_segments",
    "sketch_stroke_frac",
    "sketch_n_strokes",
    "drag_n",
    "drag_len_mean",
    "drag_len_max",
    "region_n",
    "region_translation",
    "region_rotation",
    "region_scaling",
    "region_deformation",
    "track_visible_frac",
    "track_flow_agreement",
)

#: members read for the meta table (small ones only)
META_MEMBERS = ("meta.json", "drag.json", "region_drag.json")

#: distinct bright RGB colours (drag points, regions)
PALETTE: tuple[tuple[int, int, int], ...] = (
    (255, 64, 64),
    (64, 160, 255),
    (255, 200, 0),
    (0, 220, 120),
    (255, 96, 255),
    (0, 230, 230),
    (255, 140, 0),
    (170, 120, 255),
    (180, 255, 60),
    (255, 160, 180),
    (120, 200, 255),
    (255, 255, 140),
)

HOLE_COLOR = (255, 0, 255)
SKETCH_COLOR = (0, 255, 0)
REGION_TYPES = ("translation", "rotation", "scaling", "deformation")  # the parts of a type ("translation+scaling")


class SampleNotFound(KeyError):
    def __str__(self) -> str:  # KeyError quotes its message
        return str(self.args[0]) if self.args else "sample not found"


# ---------------------------------------------------------------- output directory access


class _Out:
    """A local output directory, or an object-store URI through ``pipeline.storage`` when it exists."""

    def __init__(self, root) -> None:
        root = str(root)
        self.uri = root
        self.remote = "://" in root and not root.startswith("file://")
        if self.remote:
            from vid2pair.pipeline.storage import Store  # object stores only

            self.store = Store(root)
        else:
            self.path = Path(root[len("file://") :] if root.startswith("file://") else root)

    def exists(self, rel: str) -> bool:
        return self.store.exists(rel) if self.remote else (self.path / rel).exists()

    def read_bytes(self, rel: str) -> bytes:
        return self.store.read_bytes(rel) if self.remote else (self.path / rel).read_bytes()

    def open(self, rel: str):
        if self.remote:  # buffered, so the tar header walk does not cost one request per header
            return io.BufferedReader(self.store.open_input_file(rel), buffer_size=1 << 20)
        return open(self.path / rel, "rb")


def _read_shard(
    out: _Out, shard: str, keys: Iterable[str], suffixes: Sequence[str] | None = None
) -> dict[str, dict[str, bytes]]:
    """``{key: {suffix: bytes}}`` for ``keys`` in one shard (``suffixes``: only these members).

    Walks the tar headers (data is skipped by seeking) and stops as soon as every wanted key has been
    seen and the walk has moved past it (a sample's members are contiguous)."""
    want = set(keys)
    found: dict[str, dict[str, bytes]] = {}
    with out.open(f"shards/{shard}") as f, tarfile.open(fileobj=f, mode="r:") as tf:
        for m in tf:
            key, _, suffix = m.name.rpartition("/")[2].partition(".")
            if key not in want:
                if len(found) == len(want):
                    break
                continue
            d = found.setdefault(key, {})
            if m.isfile() and (suffixes is None or suffix in suffixes):
                d[suffix] = tf.extractfile(m).read()
    return found


# ---------------------------------------------------------------- samples


def _decode_image(data: bytes | None) -> np.ndarray | None:
    if data is None:
        return None
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if img is None:
        return None
    if img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    return img


@dataclass
class Sample:
    """One sample: its raw members (``{"src.jpg": bytes, ...}``) decoded lazily."""

    key: str
    shard: str
    members: dict[str, bytes]
    row: dict = field(default_factory=dict)  # its index row

    def member_name(self, name: str) -> str | None:
        """``"src"`` -> ``"src.jpg"`` (whatever the image format); exact names pass through."""
        if name in self.members:
            return name
        for m in self.members:
            if m.split(".", 1)[0] == name:
                return m
        return None

    def has(self, name: str) -> bool:
        return self.member_name(name) is not None

    def raw(self, name: str) -> bytes | None:
        m = self.member_name(name)
        return None if m is None else self.members[m]

    def image(self, name: str) -> np.ndarray | None:
        """RGB (H, W, 3) or single-channel (H, W) uint8, or None when absent / undecodable."""
        return _decode_image(self.raw(name))

    def json(self, name: str) -> dict | None:
        b = self.raw(name if name.endswith(".json") else name + ".json")
        return None if b is None else json.loads(b)

    def array(self, name: str) -> np.ndarray | None:
        b = self.raw(name if name.endswith(".npy") else name + ".npy")
        return None if b is None else np.load(io.BytesIO(b), allow_pickle=False)

    @cached_property
    def meta(self) -> dict:
        return self.json("meta") or {}

    @cached_property
    def drag(self) -> dict | None:
        return self.json("drag")

    @cached_property
    def region_drag(self) -> dict | None:
        return self.json("region_drag")

    def missing(self) -> list[str]:
        """Signals (:data:`SIGNALS`) this sample does not carry."""
        return [s for s, (members, _) in SIGNALS.items() if not all(m in self.members for m in members)]

    def scalars(self) -> dict:
        return meta_scalars(self.meta, self.drag, self.region_drag)


def _drag_lengths(drag: dict | None) -> list[float]:
    if not drag:
        return []
    return [
        float(math.hypot(p["target"][0] - p["source"][0], p["target"][1] - p["source"][1]))
        for p in drag.get("points", [])
    ]


def meta_scalars(meta: dict, drag: dict | None = None, region: dict | None = None) -> dict:
    """The :data:`META_METRICS` of one sample (None where the signal is absent), plus ``drag_lens``
    (list) and ``files``."""
    c, col, sk, tr = (meta.get(k) or {} for k in ("coarse", "collage", "sketch", "track"))
    region = region if region is not None else meta.get("region_drag")
    drag = drag if drag is not None else meta.get("drag")
    lens = _drag_lengths(drag)
    regions = (region or {}).get("regions", [])
    types = [r.get("type") for r in regions]
    g = lambda d, k: d.get(k) if d else None  # noqa: E731
    return {
        "coarse_hole_frac": g(c, "hole_frac"),
        "coarse_coverage": g(c, "coverage"),
        "collage_hole_frac": g(col, "hole_frac"),
        "collage_n_segments": g(col, "n_segments"),
        "sketch_stroke_frac": g(sk, "stroke_frac"),
        "sketch_n_strokes": g(sk, "n_strokes"),
        "drag_n": len(lens) if drag is not None else None,
        "drag_len_mean": float(np.mean(lens)) if lens else None,
        "drag_len_max": float(np.max(lens)) if lens else None,
        "region_n": len(regions) if region is not None else None,
        **{
            f"region_{t}": (sum(t in str(x).split("+") for x in types) if region is not None else None)
            for t in REGION_TYPES
        },
        "track_visible_frac": g(tr, "visible_frac"),
        "track_flow_agreement": g(tr, "flow_agreement"),
        "drag_lens": lens,
        "files": list(meta.get("files", [])),
    }


class QCDataset:
    """An output directory, read for QC.

    ``index`` (DataFrame, one row per sample), ``rejects`` (DataFrame), ``summary`` (dict, or None when
    the run did not finish), ``config`` (the run's config dict, from summary.json or run.json)."""

    def __init__(self, out_dir) -> None:
        from vid2pair.pipeline.io import read_index, read_rejects

        self.out = _Out(out_dir)
        self.out_dir = self.out.uri
        if not any(self.out.exists(p) for p in ("index", "summary.json", "run.json")):
            raise FileNotFoundError(
                f"{out_dir} is not a vid2pair output directory (no index/, summary.json or run.json)"
            )
        self.index = read_index(out_dir).sort_values("key", ignore_index=True)
        self.rejects = read_rejects(out_dir)
        self.summary = json.loads(self.out.read_bytes("summary.json")) if self.out.exists("summary.json") else None
        cfg = (self.summary or {}).get("config")
        if cfg is None and self.out.exists("run.json"):
            cfg = json.loads(self.out.read_bytes("run.json")).get("config")
        self.config: dict = cfg or {}
        self._rows = {k: i for i, k in enumerate(self.index["key"])} if len(self.index) else {}
        self._meta_cache: dict[str, dict] = {}

    def __len__(self) -> int:
        return len(self.index)

    def __repr__(self) -> str:
        return (
            f"QCDataset({self.out_dir!r}: {len(self)} samples, {len(self.rejects)} rejects"
            f"{'' if self.summary else ', no summary.json (unfinished run)'})"
        )

    # -- keys / filters
    def row(self, key: str) -> dict:
        if key not in self._rows:
            import difflib

            near = difflib.get_close_matches(key, list(self._rows), n=3, cutoff=0.5)
            raise SampleNotFound(
                f"no sample {key!r} in {self.out_dir}" + (f"; did you mean {', '.join(near)}?" if near else "")
            )
        return self.index.iloc[self._rows[key]].to_dict()

    def config_value(self, dotted: str, default=None):
        d = self.config
        for part in dotted.split("."):
            if not isinstance(d, dict) or part not in d:
                return default
            d = d[part]
        return d

    def select(
        self,
        key: str | Sequence[str] | None = None,
        clip: str | None = None,
        metric: str | None = None,
        lo: float | None = None,
        hi: float | None = None,
        top: int | None = None,
        bottom: int | None = None,
        n: int | None = None,
        seed: int = 0,
    ):
        """Index rows matching every filter given (a DataFrame; meta-derived metrics become columns).

        ``key``: one key or several. ``clip``: a clip_id, or a substring of the clip_id / source path.
        ``metric`` with ``lo``/``hi`` (inclusive range), ``top`` (largest first) or ``bottom`` (smallest
        first): an index column (``dt``, ``flow_p90``, ``static_score`` ...) or one of
        :data:`META_METRICS` (read from the samples' meta: one small read per sample, shard by shard).
        ``n``: a random subset (``seed``), in key order."""
        df = self.index
        if key is not None:
            keys = [key] if isinstance(key, str) else list(key)
            df = df[df["key"].isin(keys)]
        if clip is not None and len(df):
            cols = [c for c in ("clip_id", "source") if c in df.columns]
            m = (df["clip_id"] == clip) if "clip_id" in cols else None
            if m is None or not m.any():
                m = np.zeros(len(df), bool)
                for c in cols:
                    m |= df[c].astype(str).str.contains(clip, regex=False).to_numpy()
            df = df[m]
        if metric is not None and not len(df):  # nothing to filter (e.g. an output with no samples)
            df = df.assign(**{metric: []}) if metric not in df.columns else df
        elif metric is not None:
            if metric not in df.columns:
                if metric not in META_METRICS:
                    cols = [c for c in self.index.columns if c.startswith("flow_") or c in ("dt", "static_score")]
                    raise ValueError(
                        f"unknown metric {metric!r}: use an index column ({', '.join(cols)}) "
                        f"or one of {', '.join(META_METRICS)}"
                    )
                mt = self.meta_table(df["key"].tolist(), max_samples=None)
                df = df.merge(mt[["key", metric]], on="key", how="left")
            vals = df[metric].astype(float)
            keep = vals.notna()
            if lo is not None:
                keep &= vals >= lo
            if hi is not None:
                keep &= vals <= hi
            df = df[keep]
            if top is not None:
                df = df.sort_values(metric, ascending=False, kind="stable").head(top)
            elif bottom is not None:
                df = df.sort_values(metric, ascending=True, kind="stable").head(bottom)
        if n is not None and len(df) > n:
            df = df.sample(n=n, random_state=seed).sort_values("key")
        return df.reset_index(drop=True)

    def sample_keys(self, n: int, seed: int = 0, **filters) -> list[str]:
        """``n`` random keys (``seed``), after the :meth:`select` filters, in key order."""
        return self.select(n=n, seed=seed, **filters)["key"].tolist()

    # -- loading
    def load_many(self, keys: Iterable[str], members: Sequence[str] | None = None) -> list[Sample]:
        """Samples for ``keys`` (in that order), each shard read once; ``members``: only these suffixes."""
        keys = list(keys)
        rows = {k: self.row(k) for k in keys}
        by_shard: dict[str, list[str]] = {}
        for k in keys:
            by_shard.setdefault(rows[k]["shard"], []).append(k)
        got: dict[str, dict[str, bytes]] = {}
        for shard, ks in by_shard.items():
            if not self.out.exists(f"shards/{shard}"):
                raise FileNotFoundError(f"shard {shard} of {ks[0]} is missing from {self.out_dir}/shards")
            got.update(_read_shard(self.out, shard, ks, members))
        out = []
        for k in keys:
            if k not in got:
                raise SampleNotFound(f"{k} is in the index but not in {rows[k]['shard']} (run vid2pair verify)")
            out.append(Sample(k, rows[k]["shard"], got[k], rows[k]))
        return out

    def load(self, key: str) -> Sample:
        return self.load_many([key])[0]

    def samples(self, n: int = 8, seed: int = 0, **filters) -> list[Sample]:
        """``n`` random samples (``seed``) after the :meth:`select` filters."""
        return self.load_many(self.sample_keys(n, seed, **filters))

    def iter_samples(self, n: int | None = None, seed: int = 0, batch: int = 16, **filters):
        """Like :meth:`samples`, loaded ``batch`` at a time (for large ``n``)."""
        keys = self.select(n=n, seed=seed, **filters)["key"].tolist()
        for i in range(0, len(keys), batch):
            yield from self.load_many(keys[i : i + batch])

    def meta_table(self, keys: Sequence[str] | None = None, max_samples: int | None = 500, seed: int = 0):
        """:func:`meta_scalars` of ``keys`` (default: every sample, or a random ``max_samples`` of them)
        as a DataFrame with a ``key`` column; reads only the small json members."""
        import pandas as pd

        if keys is None:
            keys = self.index["key"].tolist()
        keys = list(keys)
        if max_samples is not None and len(keys) > max_samples:
            keys = sorted(random.Random(seed).sample(keys, max_samples))
        todo = [k for k in keys if k not in self._meta_cache]
        if todo:
            for s in self.load_many(todo, members=META_MEMBERS):
                self._meta_cache[s.key] = meta_scalars(s.meta, s.drag, s.region_drag)
        cols = ["key", *META_METRICS, "drag_lens", "files"]
        return pd.DataFrame([{"key": k, **self._meta_cache[k]} for k in keys], columns=cols)

    def signal_note(self, signal: str, meta: dict | None = None) -> str:
        """Why a signal may be missing: the sample's own signal-level reject when ``meta`` (the sample's
        meta.json) records one (``quality/coarse_too_many_holes: coarse holes are 0.83 x ...``), else
        from the run's config."""
        for r in (meta or {}).get("signal_rejects") or ():
            if r.get("signal") == signal:
                return f"{r.get('stage')}/{r.get('reason')}: {r.get('detail')}"
        switch = SIGNALS[signal][1]
        v = self.config_value(switch)
        if signal == "region_drag" and self.config_value("collage.enabled") is False:
            return "collage.enabled=false in this run's config (region drags come with the collage)"
        if signal == "flow" and v == "none":
            return "output.flow=none in this run's config"
        if v is False:
            return f"{switch}=false in this run's config"
        if not self.config:
            return "no config found (no summary.json / run.json)"
        return f"not produced (stage rejected or skipped it; see {switch})"


# ---------------------------------------------------------------- drawing (numpy / OpenCV)


def _as_rgb(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img[:, :, :3])


def _points_array(points) -> np.ndarray:
    """(N, 2, 2) float: [[xs, ys], [xt, yt]] from drag.json points, (N, 4) or (N, 2, 2) arrays."""
    if points is None:
        return np.zeros((0, 2, 2))
    if isinstance(points, dict):
        points = points.get("points", [])
    pts = list(points)
    if pts and isinstance(pts[0], dict):
        return np.array([[p["source"], p["target"]] for p in pts], dtype=np.float64).reshape(-1, 2, 2)
    a = np.asarray(pts, dtype=np.float64)
    return a.reshape(-1, 2, 2) if a.size else np.zeros((0, 2, 2))


def scale_points(xy: np.ndarray, sx: float, sy: float | None = None) -> np.ndarray:
    """Pixel-centre coordinates in an image resized by (sx, sy): ``(x + 0.5) * s - 0.5``."""
    sy = sx if sy is None else sy
    xy = np.asarray(xy, dtype=np.float64).copy()
    xy[..., 0] = (xy[..., 0] + 0.5) * sx - 0.5
    xy[..., 1] = (xy[..., 1] + 0.5) * sy - 0.5
    return xy


_SHIFT = 4  # OpenCV fixed-point bits: sub-pixel accurate drawing


def _fx(p) -> tuple[int, int]:
    return int(round(float(p[0]) * (1 << _SHIFT))), int(round(float(p[1]) * (1 << _SHIFT)))


def draw_drag_arrows(
    img: np.ndarray, points, color=(255, 0, 0), thickness: int = 1, radius: int = 3, outline: bool = True
) -> np.ndarray:
    """A copy of ``img`` (RGB) with one arrow per drag point, from its handle ``source`` to its
    destination ``target``: a filled disc of ``radius`` px on the handle, the shaft, an arrow head and a
    small disc on the destination, all in ``color`` (one RGB tuple, or one per point), with a thin
    black outline unless ``outline=False``. ``points``: drag.json's ``points`` list (or the whole
    drag.json dict), an (N, 4) ``[xs, ys, xt, yt]`` or (N, 2, 2) array, in this image's pixel
    coordinates (integer = pixel centre). Both end pixels get exactly ``color``."""
    import cv2

    out = _as_rgb(img).copy()
    pts = _points_array(points)
    colors = (
        [tuple(int(c) for c in color)] * len(pts)
        if np.ndim(color) == 1
        else [tuple(int(c) for c in col) for col in color]
    )
    if len(colors) < len(pts):
        raise ValueError(f"{len(colors)} colours for {len(pts)} points")
    black = (0, 0, 0)
    for (s, t), col in zip(pts, colors):
        length = float(np.hypot(*(t - s)))
        tip = min(0.4, 8.0 / length) if length > 0 else 0.0
        if outline:
            if length > 0:
                cv2.arrowedLine(out, _fx(s), _fx(t), black, thickness + 2, cv2.LINE_AA, _SHIFT, tip)
            cv2.circle(out, _fx(s), (radius + 1) << _SHIFT, black, -1, cv2.LINE_8, _SHIFT)
        if length > 0:  # not anti-aliased: the shaft is exactly ``col``
            cv2.arrowedLine(out, _fx(s), _fx(t), col, thickness, cv2.LINE_8, _SHIFT, tip)
        cv2.circle(out, _fx(s), radius << _SHIFT, col, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(out, _fx(t), max(1, radius - 1) << _SHIFT, col, -1, cv2.LINE_8, _SHIFT)
        # the end pixels themselves, whatever the rounding of the discs
        for p in (s, t):
            x, y = int(round(p[0])), int(round(p[1]))
            if 0 <= y < out.shape[0] and 0 <= x < out.shape[1]:
                out[y, x] = col
    return out


def overlay_mask(img: np.ndarray, mask: np.ndarray | None, color=HOLE_COLOR, alpha: float = 0.6) -> np.ndarray:
    """``img`` with ``color`` blended (``alpha``) where ``mask`` > 127 (e.g. 255 = hole)."""
    out = _as_rgb(img).copy()
    if mask is None:
        return out
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[..., 0]
    m = m > 127
    out[m] = (out[m] * (1 - alpha) + np.array(color, np.float64) * alpha).round().astype(np.uint8)
    return out


def overlay_sketch(img: np.ndarray, sketch: np.ndarray | None, color=SKETCH_COLOR, dim: float = 0.35) -> np.ndarray:
    """``img`` darkened by ``dim`` with the sketch strokes (``sketch`` > 127) in ``color``."""
    out = (_as_rgb(img).astype(np.float64) * (1 - dim)).round().astype(np.uint8)
    if sketch is not None:
        s = np.asarray(sketch)
        out[(s[..., 0] if s.ndim == 3 else s) > 127] = color
    return out


def flow_to_rgb(flow: np.ndarray, max_mag: float | None = None) -> np.ndarray:
    """Colour-wheel flow visualisation: hue = direction, saturation = magnitude / ``max_mag``
    (default: the 99th percentile), white = no motion."""
    import cv2

    f = np.nan_to_num(np.asarray(flow, dtype=np.float32))
    mag = np.hypot(f[..., 0], f[..., 1])
    ang = np.arctan2(f[..., 1], f[..., 0])
    if max_mag is None:
        max_mag = float(np.percentile(mag, 99)) if mag.size else 1.0
    max_mag = max(max_mag, 1e-6)
    hsv = np.zeros((*mag.shape, 3), np.uint8)
    hsv[..., 0] = ((ang + np.pi) / (2 * np.pi) * 179).astype(np.uint8)
    hsv[..., 1] = (np.clip(mag / max_mag, 0, 1) * 255).astype(np.uint8)
    hsv[..., 2] = 255
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


#: operation type -> colour (regions, their arrows and the histogram bars)
def _main_part(kind) -> str:
    """The colour a region type is drawn in: its first part (``translation+scaling``: translation)."""
    return str(kind).split("+")[0]


TYPE_COLORS = {
    "translation": (40, 140, 255),
    "rotation": (255, 150, 0),
    "scaling": (160, 80, 255),
    "deformation": (255, 40, 40),
}
TYPE_COLOR_NAMES = {"translation": "blue", "rotation": "orange", "scaling": "violet", "deformation": "red"}


def draw_region_drags(
    img: np.ndarray,
    region_masks: np.ndarray | None,
    regions: Sequence[dict],
    alpha: float = 0.45,
    sx: float = 1.0,
    sy: float | None = None,
    max_labels: int = 3,
) -> np.ndarray:
    """``img`` (RGB, already at display size) with each region of the label map ``region_masks``
    (value ``mask_index + 1``; same size as ``img``) tinted and outlined in the colour of its operation
    type (:data:`TYPE_COLORS`), its handle -> target arrows, and its type written at its centre (the
    ``max_labels`` largest regions by name, the others by initial). Region coordinates are scaled by
    ``(sx, sy)`` (the display scale of ``img`` relative to the stored frame)."""
    import cv2

    out = _as_rgb(img).copy()
    sy = sx if sy is None else sy
    colors = [TYPE_COLORS.get(_main_part(r.get("type")), (200, 200, 200)) for r in regions]
    for i, (r, col) in enumerate(zip(regions, colors)):
        if region_masks is not None:
            m = (np.asarray(region_masks) == int(r.get("mask_index", i)) + 1).astype(np.uint8)
            if m.any():
                out[m > 0] = (out[m > 0] * (1 - alpha) + np.array(col) * alpha).round().astype(np.uint8)
                contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                cv2.drawContours(out, contours, -1, col, 1, cv2.LINE_8)
    for r, col in zip(regions, colors):
        hs, ts = r.get("handles") or [], r.get("targets") or []
        if hs and ts:
            pts = scale_points(np.array([[h, t] for h, t in zip(hs, ts)], dtype=np.float64), sx, sy)
            out = draw_drag_arrows(out, pts, col, radius=2)
    order = sorted(range(len(regions)), key=lambda i: -float(regions[i].get("area") or 0))
    for rank, i in enumerate(reversed(order)):  # largest last, i.e. on top
        r = regions[i]
        c = r.get("center") or (r.get("handles") or [[0, 0]])[0]
        cx, cy = scale_points(np.array(c, dtype=np.float64), sx, sy)
        t = str(r.get("type", "?"))
        big = len(order) - 1 - rank < max_labels
        _put_text(out, t if big else t[:1].upper(), (int(cx) + 4, int(cy) - 4), colors[i], 0.36)
    return out


def _put_text(img: np.ndarray, text: str, org: tuple[int, int], color=(255, 255, 255), scale: float = 0.4) -> None:
    import cv2

    h, w = img.shape[:2]
    (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
    x = int(np.clip(org[0], 1, max(1, w - tw - 1)))
    y = int(np.clip(org[1], th + 1, max(th + 1, h - 2)))
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 2, cv2.LINE_AA)
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


_ASCII = str.maketrans({"→": ">", "Δ": "d", "×": "x", "·": "|", "≥": ">=", "≤": "<=", "—": "-", "–": "-"})


def _wrap(text: str, width_px: int, scale: float) -> list[str]:
    import cv2

    words, lines, cur = text.translate(_ASCII).split(), [], ""
    for w in words:
        cand = f"{cur} {w}".strip()
        if cur and cv2.getTextSize(cand, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)[0][0] > width_px:
            lines.append(cur)
            cur = w
        else:
            cur = cand
    return lines + ([cur] if cur else [])


def placeholder(height: int, width: int, text: str) -> np.ndarray:
    """A grey panel with ``text`` (wrapped) in it: what a missing signal renders as."""
    import cv2

    img = np.full((height, width, 3), 60, np.uint8)
    cv2.line(img, (0, 0), (width - 1, height - 1), (80, 80, 80), 1)
    cv2.line(img, (0, height - 1), (width - 1, 0), (80, 80, 80), 1)
    lines = _wrap(text, width - 12, 0.42)
    y0 = max(14, height // 2 - 9 * len(lines) + 9)
    for i, ln in enumerate(lines):
        cv2.putText(img, ln, (6, y0 + 18 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (235, 235, 235), 1, cv2.LINE_AA)
    return img


def label_image(img: np.ndarray, text: str, bar_color=(32, 32, 32), text_color=(255, 255, 255)) -> np.ndarray:
    """``img`` with a label bar above it (text wrapped to the width; ASCII rendering of ≥, →, Δ ...)."""
    import cv2

    img = _as_rgb(img)
    lines = _wrap(text, img.shape[1] - 8, 0.42) or [""]
    bar = np.zeros((8 + 16 * len(lines), img.shape[1], 3), np.uint8)
    bar[:] = bar_color
    for i, ln in enumerate(lines):
        cv2.putText(bar, ln, (4, 16 + 16 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.42, text_color, 1, cv2.LINE_AA)
    return np.concatenate([bar, img], axis=0)


# ---------------------------------------------------------------- gallery panels


@dataclass
class Panel:
    name: str  # one of PANELS
    label: str  # what the panel shows (unicode; figure titles / HTML captions)
    image: np.ndarray  # RGB uint8 at display size
    missing: str | None = None  # what is missing, when the panel is a placeholder


def _resize(img: np.ndarray, w: int, h: int, nearest: bool = False) -> np.ndarray:
    import cv2

    if img.shape[1] == w and img.shape[0] == h:
        return img
    interp = cv2.INTER_NEAREST if nearest else (cv2.INTER_AREA if w < img.shape[1] else cv2.INTER_LINEAR)
    return cv2.resize(img, (w, h), interpolation=interp)


def _resize_strokes(mask: np.ndarray, w: int, h: int) -> np.ndarray:
    """Downscale a thin-stroke mask without losing strokes (any coverage counts)."""
    import cv2

    if mask.shape[1] == w and mask.shape[0] == h:
        return mask
    m = cv2.resize(mask.astype(np.float32), (w, h), interpolation=cv2.INTER_AREA)
    return np.where(m >= 40, 255, 0).astype(np.uint8)


def _pct(v) -> str:
    return "?" if v is None else f"{100 * float(v):.1f} %"


def sample_caption(sample: Sample) -> str:
    """One line of the sample's key numbers."""
    m, sc = sample.meta, sample.scalars()
    st = (m.get("flow") or {}).get("stats") or {}
    parts = []
    if m.get("dt") is not None:
        parts.append(f"Δt {m['dt']:.2f} s" + (" (reversed)" if m.get("reversed") else ""))
    if st:
        parts.append(
            f"flow p50/p90/max {st.get('p50', 0):.1f}/{st.get('p90', 0):.1f}/{st.get('max', 0):.1f} px, "
            f"moving {_pct(st.get('moving_frac'))}"
        )
    if m.get("static_score") is not None:
        parts.append(f"static score {m['static_score']:.4g}")
    if sc["coarse_hole_frac"] is not None:
        parts.append(f"coarse holes {_pct(sc['coarse_hole_frac'])}")
    if sc["collage_hole_frac"] is not None:
        parts.append(f"collage holes {_pct(sc['collage_hole_frac'])}")
    if sc["drag_n"] is not None:
        parts.append(f"{sc['drag_n']} drags" + (f" (max {sc['drag_len_max']:.0f} px)" if sc["drag_len_max"] else ""))
    if sc["region_n"] is not None:
        parts.append(f"{sc['region_n']} region drags")
    if sc["track_visible_frac"] is not None:
        parts.append(f"tracks visible {_pct(sc['track_visible_frac'])}")
    miss = sample.missing()
    if miss:
        parts.append("missing: " + ", ".join(miss))
    return " · ".join(parts)


def render_panels(sample: Sample, width: int = 256, ds: QCDataset | None = None) -> list[Panel]:
    """The gallery panels (:data:`PANELS`) of one sample, each ``width`` px wide. ``ds`` (optional)
    explains missing signals from the run's config."""
    src, tgt = sample.image("src"), sample.image("tgt")
    ref = src if src is not None else tgt
    H, W = ref.shape[:2] if ref is not None else tuple(reversed(sample.meta.get("size", [320, 240])))
    h = max(1, int(round(H * width / W)))
    sx, sy = width / W, h / H
    m = sample.meta

    def why(signal: str) -> str:
        if ds is not None:
            return ds.signal_note(signal, m)
        rej = [r for r in m.get("signal_rejects") or () if r.get("signal") == signal]
        return f"{rej[0]['stage']}/{rej[0]['reason']}: {rej[0]['detail']}" if rej else "not in this sample"

    def ph(name: str, label: str, what: str, signal: str | None) -> Panel:
        reason = f"missing: {what}" + (f" ({why(signal)})" if signal else "")
        return Panel(name, f"{label} — missing", placeholder(h, width, reason), reason)

    def disp(img, nearest=False):
        return _resize(_as_rgb(img), width, h, nearest)

    panels: list[Panel] = []
    # source / target
    for name, img, member, label in (("source", src, "src", "source"), ("target", tgt, "tgt", "target")):
        t = m.get("src_time" if name == "source" else "tgt_time")
        lab = f"{label}" + (f" (frame {m.get(member + '_frame')}, t={t:.2f} s)" if t is not None else "")
        panels.append(Panel(name, lab, disp(img)) if img is not None else ph(name, label, f"{member} image", None))
    # flow
    flow = sample.array("flow")
    if flow is not None and flow.ndim == 3 and flow.shape[2] == 2:
        p90 = ((m.get("flow") or {}).get("stats") or {}).get("p90")
        panels.append(
            Panel("flow", "flow src→tgt" + (f" (p90 {p90:.1f} px)" if p90 is not None else ""), disp(flow_to_rgb(flow)))
        )
    else:
        panels.append(ph("flow", "flow src→tgt", "flow.npy", "flow"))
    # sketch on the target
    sk = sample.image("sketch")
    if sk is not None and tgt is not None:
        n = (m.get("sketch") or {}).get("n_strokes")
        panels.append(
            Panel(
                "sketch",
                "sketch on target" + (f" ({n} strokes)" if n is not None else ""),
                overlay_sketch(disp(tgt), _resize_strokes(sk if sk.ndim == 2 else sk[..., 0], width, h)),
            )
        )
    else:
        panels.append(ph("sketch", "sketch on target", "sketch.png", "sketch"))
    # drags on source and target
    drag = sample.drag
    if drag is not None:
        pts = _points_array(drag)
        pts_d = scale_points(pts, sx, sy) if len(pts) else pts
        cols = [PALETTE[i % len(PALETTE)] for i in range(len(pts))]
        rev = drag.get("direction") == "target_to_source"
        dmask = sample.image("drag_mask")
        for name, img, where in (("drag_src", src, "source"), ("drag_tgt", tgt, "target")):
            if img is None:
                panels.append(ph(name, f"drags on {where}", f"{where} image", None))
                continue
            base = disp(img)
            handle_side = "target" if rev else "source"
            if dmask is not None and where == handle_side:
                base = overlay_mask(base, _resize(dmask, width, h, nearest=True), (80, 140, 255), 0.3)
            tinted = ", mask tinted" if dmask is not None and where == handle_side else ""
            lab = f"drags on {where} ({len(pts)}{tinted})"
            if rev:
                lab += " [tgt→src]"
            panels.append(Panel(name, lab, draw_drag_arrows(base, pts_d, cols) if len(pts) else base))
    else:
        panels.append(ph("drag_src", "drags on source", "drag.json", "drag"))
        panels.append(ph("drag_tgt", "drags on target", "drag.json", "drag"))
    # coarse edit and collage, holes tinted
    for name, label, signal in (("coarse", "coarse edit", "coarse"), ("collage", "collage", "collage")):
        img, mask = sample.image(name), sample.image(f"{name}_mask")
        if img is None:
            panels.append(ph(name, f"{label} + holes", f"{name}.png", signal))
            continue
        hf = (m.get(name) or {}).get("hole_frac")
        nseg = (m.get(name) or {}).get("n_segments") if name == "collage" else None
        extra = f", {nseg} segments" if nseg else ""
        lab = f"{label}, holes tinted ({_pct(hf)}{extra})" if mask is not None else f"{label} (no {name}_mask.png)"
        panels.append(
            Panel(name, lab, overlay_mask(disp(img), None if mask is None else _resize(mask, width, h, nearest=True)))
        )
    # region drags
    rd = sample.region_drag
    if rd is not None and src is not None:
        regions = rd.get("regions", [])
        rm = sample.image("region_masks")
        rm_d = None if rm is None else _resize(rm if rm.ndim == 2 else rm[..., 0], width, h, nearest=True)
        counts = {t: sum(t in str(r.get("type")).split("+") for r in regions) for t in REGION_TYPES}
        desc = ", ".join(f"{c} {t} ({TYPE_COLOR_NAMES[t]})" for t, c in counts.items() if c) or "none (nothing moves)"
        panels.append(
            Panel(
                "region_drag",
                f"region drags on source: {desc}",
                draw_region_drags(disp(src), rm_d, regions, sx=sx, sy=sy),
            )
        )
    else:
        panels.append(ph("region_drag", "region drags", "region_drag.json", "region_drag"))
    order = {name: i for i, name in enumerate(PANELS)}
    return sorted(panels, key=lambda p: order[p.name])


def error_panels(key: str, err: Exception, width: int = 256, height: int = 192) -> list[Panel]:
    """Placeholder panels for a sample that could not be read."""
    msg = f"could not read {key}: {type(err).__name__}: {err}"
    return [Panel(n, f"{n} — unreadable", placeholder(height, width, msg), msg) for n in PANELS]


def contact_sheet(sample: Sample, width: int = 320, cols: int = 3, ds: QCDataset | None = None) -> np.ndarray:
    """One image of every panel of ``sample`` (labelled, ``cols`` per row) under a header with the key
    and its numbers: what ``vid2pair inspect --key`` writes."""
    panels = render_panels(sample, width, ds)
    tiles = [label_image(p.image, p.label) for p in panels]
    th = max(t.shape[0] for t in tiles)
    tiles = [np.pad(t, ((0, th - t.shape[0]), (0, 0), (0, 0))) for t in tiles]
    gap = 4
    rows = []
    for i in range(0, len(tiles), cols):
        row = tiles[i : i + cols] + [np.zeros_like(tiles[0])] * (cols - len(tiles[i : i + cols]))
        sep = np.zeros((th, gap, 3), np.uint8)
        rows.append(np.concatenate([x for t in row for x in (t, sep)][:-1], axis=1))
    sep = np.zeros((gap, rows[0].shape[1], 3), np.uint8)
    grid = np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)
    return label_image(grid, f"{sample.key} ({sample.shard}) | {sample_caption(sample)}", bar_color=(0, 0, 0))


# ---------------------------------------------------------------- encoding helpers


def fig_to_png(fig, dpi: int | None = None) -> bytes:
    """PNG bytes of a matplotlib Figure."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def encode_image(img: np.ndarray, fmt: str = "jpeg", quality: int = 82) -> bytes:
    """RGB (or grey) uint8 -> JPEG / PNG bytes (QC images: a smaller JPEG quality than the samples')."""
    return _encode_image(np.asarray(img), fmt, quality)


def data_uri(data: bytes, mime: str) -> str:
    import base64

    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def show(obj) -> None:
    """Display a Figure, an image array or PNG bytes in a notebook (as a PNG image output)."""
    from IPython.display import Image, display

    if isinstance(obj, (bytes, bytearray)):
        data = bytes(obj)
    elif isinstance(obj, np.ndarray):
        data = encode_image(obj, "png")
    else:
        data = fig_to_png(obj)
    display(Image(data=data, format="png"))


# ---------------------------------------------------------------- overview


def summary_table(ds: QCDataset):
    """The run summary as a two-column DataFrame (``field``, ``value``)."""
    import pandas as pd

    s = ds.summary
    rows: list[tuple[str, object]] = [("output", ds.out_dir)]
    if s is None:
        rows += [
            ("status", "no summary.json: the run did not finish; counts are from committed shards"),
            ("samples (index)", len(ds)),
            ("shards", int(ds.index["shard"].nunique()) if len(ds) else 0),
            ("rejects", len(ds.rejects)),
        ]
    else:
        rows += [
            ("inputs", s.get("inputs")),
            ("samples", s.get("samples")),
            ("shards", s.get("shards")),
            ("clips with samples", s.get("clips_with_samples")),
            ("clips rejected", s.get("clips_rejected")),
            ("clips with every shot/pair rejected", s.get("clips_without_samples")),
            ("rejects", s.get("rejects_total")),
            ("rejects by level", ", ".join(f"{k} {v}" for k, v in (s.get("rejects_by_level") or {}).items()) or "-"),
            ("all inputs accounted", s.get("all_inputs_accounted")),
            ("runner", s.get("runner")),
            ("wall time (s)", s.get("wall_s")),
            ("pairs/s", s.get("pairs_per_s")),
            ("finished at", s.get("finished_at")),
            ("config", ds.config_value("name", "?")),
            ("config fingerprint", s.get("config_fingerprint")),
            ("vid2pair", (s.get("versions") or {}).get("vid2pair")),
        ]
    if len(ds):
        rows += [("clips in index", int(ds.index["clip_id"].nunique()) if "clip_id" in ds.index else "?")]
        if "split" in ds.index and "clip_id" in ds.index:
            per = ds.index.groupby("split")["clip_id"].agg(["size", "nunique"])
            rows.append(
                (
                    "split",
                    ", ".join(f"{sp} {int(r['size'])} samples / {int(r['nunique'])} clips" for sp, r in per.iterrows()),
                )
            )
        if "width" in ds.index and "height" in ds.index:
            sizes = ds.index.groupby(["width", "height"]).size().sort_values(ascending=False)
            rows.append(("stored sizes", ", ".join(f"{w}×{h} ({n})" for (w, h), n in sizes.head(4).items())))
    return pd.DataFrame(rows, columns=["field", "value"]).astype({"value": str})


def rejects_table(ds: QCDataset):
    """Reject counts per (stage, reason), most frequent first, with one example each."""
    import pandas as pd

    cols = ["stage", "reason", "count", "level", "example", "detail"]
    r = ds.rejects
    if not len(r):
        return pd.DataFrame(columns=cols)
    rows = []
    for (stage, reason), g in r.groupby(["stage", "reason"]):
        ex = g.iloc[0]
        rows.append(
            (
                stage,
                reason,
                len(g),
                ", ".join(sorted(set(g["level"].astype(str)))),
                Path(str(ex["source"])).name + (f" / {ex['key']}" if str(ex.get("key", "")) else ""),
                str(ex.get("detail", ""))[:120],
            )
        )
    return pd.DataFrame(rows, columns=cols).sort_values("count", ascending=False, kind="stable").reset_index(drop=True)


def signals_table(ds: QCDataset, meta=None):
    """Which signals the samples carry (from their meta ``files``; ``meta``: a :meth:`QCDataset.meta_table`)."""
    import pandas as pd

    cols = ["signal", "members", "samples with it", "of", "note"]
    if meta is None:
        meta = ds.meta_table()
    n = len(meta)
    rows = []
    for sig, (members, _) in SIGNALS.items():
        have = int(sum(all(mm in (f or []) for mm in members) for f in meta["files"])) if n else 0
        note = "" if n and have == n else ("no samples" if not n else ds.signal_note(sig))
        rows.append((sig, ", ".join(members), have, n, note))
    return pd.DataFrame(rows, columns=cols)


def _new_fig(w: float, h: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(w, h), dpi=90, layout="constrained")


def _no_data(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, fontsize=9, color="0.35", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def fig_rejects(ds: QCDataset):
    """Reject reasons as horizontal bars, grouped and coloured by stage."""
    r = ds.rejects
    groups = (
        []
        if not len(r)
        else sorted(
            ((stage, g.groupby("reason").size().sort_values(ascending=False)) for stage, g in r.groupby("stage")),
            key=lambda sg: -sg[1].sum(),
        )
    )
    n_bars = sum(len(g) for _, g in groups)
    fig = _new_fig(7, max(1.7, 0.9 + 0.3 * (n_bars + len(groups))))
    ax = fig.add_subplot()
    if not groups:
        _no_data(ax, "no rejects")
        ax.set_title("rejects by stage and reason")
        return fig
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    y, labels, ticks = 0, [], []
    for i, (stage, g) in enumerate(groups):
        ys = np.arange(y, y + len(g))
        bars = ax.barh(ys, g.values, color=cmap(i % 10), label=f"{stage} ({int(g.sum())})")
        ax.bar_label(bars, padding=2, fontsize=8)
        labels += [f"{stage}: {reason}" for reason in g.index]
        ticks += list(ys)
        y += len(g) + 1
    ax.set_yticks(ticks, labels, fontsize=8)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.invert_yaxis()  # the most frequent stage on top
    ax.set_xlabel("rejects")
    ax.set_title(f"rejects by stage and reason ({len(r)} in all)")
    if len(groups) > 1:
        ax.legend(fontsize=8, loc="best")
    ax.margins(x=0.12)
    return fig


def _static_scores(ds: QCDataset) -> tuple[np.ndarray, np.ndarray]:
    """Static-camera scores of kept shots (index, one per shot) and of rejected shots (reject detail)."""
    import re

    kept = np.array([])
    if len(ds) and "static_score" in ds.index:
        cols = [c for c in ("clip_id", "shot") if c in ds.index]
        kept = ds.index.drop_duplicates(cols)["static_score"].dropna().to_numpy(dtype=float)
    rej = np.array([])
    r = ds.rejects
    if len(r):
        det = r[(r["stage"] == "static_camera")]["detail"].astype(str)
        vals = [re.search(r"score\s+([-+0-9.eE]+)", d) for d in det]
        rej = np.array([float(v.group(1)) for v in vals if v], dtype=float)
    return kept, rej


def _col(df, c):
    return df[c].dropna().to_numpy(dtype=float) if c in df and len(df) else np.array([])


def _hist(ax, series, title, xlabel, why, log=False, vline=None):
    """Histograms of ``[(label, values)]`` on ``ax`` (one filled, several as steps); ``why`` when empty;
    ``vline``: ``(x, label)`` or a list of them."""
    series = [(lab, np.asarray(v, float)[np.isfinite(np.asarray(v, float))]) for lab, v in series]
    series = [(lab, v) for lab, v in series if len(v)]
    ax.set_title(title, fontsize=10)
    if not series:
        _no_data(ax, why)
        return
    allv = np.concatenate([v for _, v in series])
    if log:
        pos = allv[allv > 0]
        lo = pos.min() if len(pos) else 1e-6
        bins = np.logspace(np.log10(lo) - 0.05, np.log10(max(allv.max(), lo * 1.1)) + 0.05, 30)
        ax.set_xscale("log")
        series = [(lab, np.maximum(v, lo)) for lab, v in series]
    else:
        bins = np.histogram_bin_edges(allv, bins=min(30, max(5, int(np.sqrt(len(allv))) + 1)))
    for lab, v in series:
        ax.hist(
            v,
            bins=bins,
            histtype="stepfilled" if len(series) == 1 else "step",
            linewidth=1.5,
            alpha=0.8 if len(series) == 1 else 1.0,
            label=f"{lab} (n={len(v)})",
        )
    for x, lab in [vline] if isinstance(vline, tuple) else (vline or []):
        ax.axvline(x, color="k", linestyle="--", linewidth=1, label=lab)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.set_ylabel("count", fontsize=9)
    ax.legend(fontsize=7)
    ax.tick_params(labelsize=8)


#: the quality scores of the index: (column, title, the quality.* thresholds drawn, which end is worse)
QUALITY_METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("q_changed_frac", "changed fraction of the frame", ("min_changed_frac", "max_changed_frac"), "low"),
    ("q_fb_consistent", "forward-backward consistent (moving)", ("min_fb_consistent",), "low"),
    ("q_unexplained_frac", "unexplained share of the change", ("max_unexplained_frac",), "high"),
    ("q_unexplained_blob_frac", "largest unexplained region (frame)", ("max_unexplained_blob_frac",), "high"),
    ("q_camera_shift_px", "background shift src -> tgt (px)", (), "high"),
    ("q_coarse_gain_db", "coarse edit gain over no edit (dB)", ("min_gain_db",), "low"),
    ("q_collage_gain_db", "collage gain over no edit (dB)", ("min_gain_db",), "low"),
    ("q_coarse_hole_ratio", "coarse holes / changed area", ("max_hole_ratio",), "high"),
    ("q_sketch_on_change", "sketch strokes on the change", ("sketch_min_on_change",), "low"),
)


def quality_order(ds: QCDataset, metric: str) -> list[str]:
    """Sample keys sorted worst first by a quality (or any index) column: ascending for the metrics
    whose low end is worse (:data:`QUALITY_METRICS`), descending otherwise; samples without it last."""
    idx = ds.index
    if metric not in idx:
        raise KeyError(
            f"no column {metric!r} in the index; quality columns: "
            f"{', '.join(c for c in idx.columns if c.startswith('q_')) or 'none'}"
        )
    worse = {c: w for c, _, _, w in QUALITY_METRICS}.get(metric, "high")
    df = idx[["key", metric]].copy()
    return list(df.sort_values(metric, ascending=worse == "low", kind="stable", na_position="last")["key"])


def fig_quality(ds: QCDataset):
    """Histograms of the quality stage's scores (index columns, every sample) with the thresholds."""
    metrics = [m for m in QUALITY_METRICS if m[0] in ds.index]
    fig = _new_fig(13, 2.9 * max(1, -(-len(metrics) // 3)))
    if not metrics:
        _no_data(fig.add_subplot(), "no quality scores in the index (quality.enabled=false, or an older output)")
        return fig
    axs = np.atleast_1d(fig.subplots(-(-len(metrics) // 3), 3)).ravel()
    for ax, (c, title, keys, _) in zip(axs, metrics):
        lines = [(ds.config_value(f"quality.{k}"), k) for k in keys]
        lines = [(v, k) for v, k in lines if isinstance(v, (int, float)) and not isinstance(v, bool)]
        _hist(ax, [("samples", _col(ds.index, c))], title, c, "no values", vline=lines)
    for ax in axs[len(metrics) :]:
        ax.set_visible(False)
    fig.suptitle(f"quality scores of the {len(ds)} written samples (dashed: the thresholds)", fontsize=11)
    return fig


def fig_histograms(ds: QCDataset, meta=None):
    """3×3 histograms: Δt, flow magnitude (p50/p90/p99), moving fraction, static-camera score (kept and
    rejected shots, threshold), drag lengths, hole fractions (coarse, collage), sketch density, region
    drag types, track quality. Index columns cover every sample; meta-derived panels cover ``meta``
    (a :meth:`QCDataset.meta_table`, default a random 500)."""
    if meta is None:
        meta = ds.meta_table()
    idx = ds.index
    n_meta, n_all = len(meta), len(idx)
    sub = f" (random {n_meta} of {n_all})" if n_meta < n_all else ""
    fig = _new_fig(13, 10)
    axs = fig.subplots(3, 3)

    col, hist = _col, _hist

    none = "no samples" if not n_all else None
    hist(axs[0, 0], [("pairs", col(idx, "dt"))], "Δt between source and target", "Δt (s)", none or "no dt column")
    hist(
        axs[0, 1],
        [(f"flow {p}", col(idx, f"flow_{p}")) for p in ("p50", "p90", "p99")],
        "flow magnitude per pair",
        "px (stored size)",
        none or "no flow stats in the index",
    )
    hist(
        axs[0, 2],
        [("pairs", col(idx, "flow_moving_frac"))],
        "fraction of pixels moving",
        "moving fraction",
        none or "no flow stats in the index",
    )
    kept, rej = _static_scores(ds)
    thr = ds.config_value("static_camera.max_shift")
    hist(
        axs[1, 0],
        [("kept shots", kept), ("rejected shots", rej)],
        "static-camera score (per shot)",
        "camera motion (fraction of the diagonal)",
        "no static-camera scores",
        log=True,
        vline=(thr, f"max_shift {thr}") if isinstance(thr, (int, float)) else None,
    )
    lens = np.array([x for v in meta["drag_lens"] for x in (v or [])]) if n_meta else np.array([])
    hist(
        axs[1, 1],
        [("drag points", lens)],
        "drag length" + sub,
        "|target − source| (px)",
        none or ("no drag.json in the samples (" + ds.signal_note("drag") + ")"),
    )
    hist(
        axs[1, 2],
        [("coarse", col(meta, "coarse_hole_frac")), ("collage", col(meta, "collage_hole_frac"))],
        "hole fraction" + sub,
        "fraction of the frame",
        none or "no coarse edit or collage in the samples",
    )
    hist(
        axs[2, 0],
        [("pairs", col(meta, "sketch_stroke_frac"))],
        "sketch stroke fraction" + sub,
        "fraction of the frame",
        none or ("no sketch in the samples (" + ds.signal_note("sketch") + ")"),
    )
    ax = axs[2, 1]
    ax.set_title("region drag types" + sub, fontsize=10)
    counts = [int(col(meta, f"region_{t}").sum()) for t in REGION_TYPES]
    if n_meta and col(meta, "region_n").size:
        bars = ax.bar(REGION_TYPES, counts, color=[np.array(TYPE_COLORS[t]) / 255 for t in REGION_TYPES])
        ax.bar_label(bars, fontsize=8)
        nz = int((col(meta, "region_n") == 0).sum())
        ax.set_ylabel("regions", fontsize=9)
        ax.set_xlabel(f"pairs with no region: {nz}", fontsize=9)
        ax.tick_params(labelsize=8)
    else:
        _no_data(ax, none or ("no region_drag.json in the samples (" + ds.signal_note("region_drag") + ")"))
    hist(
        axs[2, 2],
        [("visible fraction", col(meta, "track_visible_frac")), ("flow agreement", col(meta, "track_flow_agreement"))],
        "tracks" + sub,
        "fraction",
        none or ("no tracks in the samples (" + ds.signal_note("tracks") + ")"),
    )
    fig.suptitle(f"{ds.out_dir}: {n_all} samples", fontsize=11)
    return fig


def fig_gallery(samples: Sequence[Sample], width: int = 256, ds: QCDataset | None = None, panels=PANELS):
    """A Figure with one row per sample and one labelled column per panel (notebooks)."""
    samples = list(samples)
    if not samples:
        fig = _new_fig(8, 1.5)
        _no_data(fig.add_subplot(), "no samples to show")
        return fig
    pos = {name: i for i, name in enumerate(panels)}
    rendered = [
        sorted((p for p in render_panels(s, width, ds) if p.name in pos), key=lambda p: pos[p.name]) for s in samples
    ]
    ncol = len(rendered[0])
    aspect = rendered[0][0].image.shape[0] / rendered[0][0].image.shape[1]
    fig = _new_fig(2.3 * ncol, len(samples) * (2.3 * aspect + 0.4))
    axs = np.asarray(fig.subplots(len(samples), ncol, squeeze=False))
    for r, (s, row) in enumerate(zip(samples, rendered)):
        for c, p in enumerate(row):
            ax = axs[r, c]
            ax.imshow(p.image)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title("\n".join(_wrap_plain(p.label, 34)), fontsize=7, color="firebrick" if p.missing else "k")
            if c == 0:
                ax.set_ylabel(
                    s.key.rsplit("_s", 1)[0][:22] + "\n" + s.key[len(s.key.rsplit("_s", 1)[0]) + 1 :], fontsize=6
                )
    return fig


def _wrap_plain(text: str, n: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, n) or [""]


# ---------------------------------------------------------------- vid2pair inspect --key


def _pretty(obj, indent: int = 0, width: int = 150) -> str:
    """JSON with short lists / dicts on one line (collage segments, hops ...)."""
    one = json.dumps(obj, ensure_ascii=False)
    pad = " " * indent
    if len(one) + indent <= width or not isinstance(obj, (dict, list)) or not obj:
        return one
    inner = " " * (indent + 2)
    if isinstance(obj, dict):
        items = [f"{inner}{json.dumps(k)}: {_pretty(v, indent + 2, width).lstrip()}" for k, v in obj.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    items = [f"{inner}{_pretty(v, indent + 2, width).lstrip()}" for v in obj]
    return "[\n" + ",\n".join(items) + f"\n{pad}]"


def inspect_key(out_dir, key: str, png_path=None, width: int = 320) -> tuple[str, Path]:
    """The sample's meta (and drag / region-drag json) as text, and its contact sheet written to
    ``png_path`` (default ``<out_dir>/qc/<key>.png``; ``./vid2pair-qc/<key>.png`` for an object-store
    output). Raises :class:`SampleNotFound` (a KeyError) for an unknown key, FileNotFoundError for a
    missing output or shard."""
    ds = QCDataset(out_dir)
    s = ds.load(key)
    if png_path is None:
        png_path = (Path("vid2pair-qc") if ds.out.remote else ds.out.path / "qc") / f"{key}.png"
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(encode_image(contact_sheet(s, width, ds=ds), "png"))
    lines = [
        f"{key}  (shard {s.shard}, {len(s.members)} members: {', '.join(sorted(s.members))})",
        sample_caption(s),
        "",
        "meta.json:",
        _pretty(s.meta),
    ]
    if s.drag is not None:
        lines += ["", "drag.json:", _pretty(s.drag)]
    if s.region_drag is not None:
        lines += ["", "region_drag.json:", _pretty(s.region_drag)]
    miss = s.missing()
    if miss:
        lines += ["", "missing signals: " + "; ".join(f"{m} ({ds.signal_note(m, s.meta)})" for m in miss)]
    lines += ["", f"contact sheet: {png_path}"]
    return "\n".join(lines), png_path
