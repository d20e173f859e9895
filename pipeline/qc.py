"""Quality control: look at an output's pairs before training on them.

The entry point for everything visual, shared by ``vid2pair report`` (pipeline/report.py, one HTML
file), ``vid2pair inspect --key`` (:func:`inspect_key`, a contact sheet PNG) and
``notebooks/qc.ipynb``. This module reads the data and lays out the panels; the tables and figures
are in :mod:`vid2pair.pipeline.qc_figures` (also reachable here: ``qc.fig_gallery``), the drawing in
:mod:`vid2pair.ops.draw` (re-exported here), and each signal draws its own panels
(:attr:`vid2pair.core.stage.Signal.draw`, in its stage's module).

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
import random
import tarfile
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np

from vid2pair.ops.draw import (  # noqa: F401  (the drawing helpers: re-exported for the notebook and tests)
    _ASCII,
    _SHIFT,
    HOLE_COLOR,
    PALETTE,
    REGION_TYPES,
    SKETCH_COLOR,
    TYPE_COLOR_NAMES,
    TYPE_COLORS,
    Panel,
    PanelView,
    _as_rgb,
    _fx,
    _main_part,
    _pct,
    _points_array,
    _put_text,
    _resize,
    _resize_strokes,
    _wrap,
    draw_drag_arrows,
    draw_region_drags,
    flow_to_rgb,
    label_image,
    overlay_mask,
    overlay_sketch,
    placeholder,
    scale_points,
)
from vid2pair.pipeline.plan import signals as plan_signals
from vid2pair.stages.encode import encode_image as _encode_image

# ---------------------------------------------------------------- constants

#: signal -> (its sample members, the config switch that turns it off): from the stage declarations
SIGNALS: dict[str, tuple[tuple[str, ...], str]] = {n: (s.members, s.switch) for n, s in plan_signals().items()}

#: gallery panels, in order: source, target, then each signal's (declared with the signal)
PANELS: tuple[str, ...] = ("source", "target") + tuple(p for g in plan_signals().values() for p in g.panels)

#: metrics read from the samples' meta.json and small json members (not in the index): what each
#: signal measures (:attr:`vid2pair.core.stage.Signal.metrics`, in its stage's module)
META_METRICS: tuple[str, ...] = tuple(n for g in plan_signals().values() if g.metrics for n in g.metrics.names)

#: members read for the meta table (small ones only): meta.json and the signals' json members
META_MEMBERS = ("meta.json", *(m for g in plan_signals().values() for m in g.members if m.endswith(".json")))


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

    def missing(self, stages: tuple | None = None) -> list[str]:
        """Signals (:data:`SIGNALS`, or those of ``stages``) this sample does not carry."""
        sigs = SIGNALS if stages is None else {n: (g.members, g.switch) for n, g in plan_signals(stages).items()}
        return [s for s, (members, _) in sigs.items() if not all(m in self.members for m in members)]

    def scalars(self) -> dict:
        return meta_scalars(self.meta, self.json)


def meta_scalars(
    meta: dict, read: Optional[Callable[[str], Optional[dict]]] = None, signals: dict | None = None
) -> dict:
    """The :data:`META_METRICS` of one sample (None where the sample does not carry the signal: its
    meta.json ``signals`` list, when there is one), what else the signals
    measure (``drag_lens``, a list) and ``files``. ``read(member)``: a small json member of the
    sample, parsed (None: absent); a signal falls back to its meta entry. ``signals``: whose metrics
    (default the stage graph's)."""
    read = read or (lambda name: None)
    carried = meta.get("signals")  # (older outputs have no list: every signal counts)
    out: dict = {}
    for g in (plan_signals() if signals is None else signals).values():
        if g.metrics is not None:
            vals = g.metrics.measure(meta, read)
            if carried is not None and g.name not in carried:  # dropped: its meta entry stays, it is not there
                vals = {k: [] if isinstance(v, list) else None for k, v in vals.items()}
            out.update(vals)
    out["files"] = list(meta.get("files", []))
    return out


class QCDataset:
    """An output directory, read for QC.

    ``index`` (DataFrame, one row per sample), ``rejects`` (DataFrame), ``summary`` (dict, or None when
    the run did not finish), ``config`` (the run's config dict, from summary.json or run.json)."""

    def __init__(self, out_dir, stages: tuple | None = None) -> None:
        from vid2pair.pipeline.io import read_index, read_rejects

        #: the signals of the pipeline that wrote it (``stages``, default the stage graph): what the
        #: meta table measures, the histograms plot and the notes explain
        self.signals = plan_signals() if stages is None else plan_signals(stages)
        self.meta_metrics = tuple(n for g in self.signals.values() if g.metrics for n in g.metrics.names)

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
                if metric not in self.meta_metrics:
                    cols = [c for c in self.index.columns if c.startswith("flow_") or c in ("dt", "static_score")]
                    raise ValueError(
                        f"unknown metric {metric!r}: use an index column ({', '.join(cols)}) "
                        f"or one of {', '.join(self.meta_metrics)}"
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
            small = ("meta.json", *(m for g in self.signals.values() for m in g.members if m.endswith(".json")))
            for s in self.load_many(todo, members=small):
                self._meta_cache[s.key] = meta_scalars(s.meta, s.json, self.signals)
        mm = self.meta_metrics
        cols = ["key", *mm, *(c for c in meta_scalars({}, signals=self.signals) if c not in mm)]
        return pd.DataFrame([{"key": k, **self._meta_cache[k]} for k in keys], columns=cols)

    def signal_note(self, signal: str, meta: dict | None = None) -> str:
        """Why a signal may be missing: the sample's own signal-level reject when ``meta`` (the sample's
        meta.json) records one (``quality/coarse_too_many_holes: coarse holes are 0.83 x ...``), else
        from the run's config."""
        for r in (meta or {}).get("signal_rejects") or ():
            if r.get("signal") == signal:
                return f"{r.get('stage')}/{r.get('reason')}: {r.get('detail')}"
        g = self.signals.get(signal)
        switch = g.switch if g is not None else f"{signal}.enabled"
        for need in g.requires if g is not None else ():
            if self.config_value(need) is False:
                return f"{need}=false in this run's config ({signal} needs it)"
        v = self.config_value(switch)
        if v is False or v == "none":
            return f"{switch}={'false' if v is False else v} in this run's config"
        if not self.config:
            return "no config found (no summary.json / run.json)"
        return f"not produced (stage rejected or skipped it; see {switch})"


def sample_caption(sample: Sample, stages: tuple | None = None) -> str:
    """One line of the sample's key numbers (each signal's in its own words, :attr:`Metrics.caption`;
    ``stages``: the pipeline, default the stage graph)."""
    sigs = plan_signals() if stages is None else plan_signals(stages)
    m, sc = sample.meta, meta_scalars(sample.meta, sample.json, sigs)
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
    for g in sigs.values():
        words = g.metrics.caption(sc) if g.metrics is not None and g.metrics.caption is not None else None
        if words:
            parts.append(words)
    miss = sample.missing(stages)
    if miss:
        parts.append("missing: " + ", ".join(miss))
    return " · ".join(parts)


def panel_names(stages: tuple | None = None) -> tuple[str, ...]:
    """The gallery's panels, in order: source, target, then each signal's (:attr:`Signal.panels`), in
    the order of the stages (default: the pipeline's)."""
    sigs = plan_signals() if stages is None else plan_signals(stages)
    return ("source", "target") + tuple(p for g in sigs.values() for p in g.panels)


def render_panels(
    sample: Sample, width: int = 256, ds: QCDataset | None = None, stages: tuple | None = None
) -> list[Panel]:
    """The gallery panels (:func:`panel_names`) of one sample, each ``width`` px wide: source and target,
    then what each signal draws (its :attr:`~vid2pair.core.stage.Signal.draw`, in its stage's module).
    ``ds`` (optional) explains missing signals from the run's config; ``stages``: the pipeline (default
    the stage graph; a test adds its own)."""
    v = PanelView(sample, width, ds)
    m = sample.meta
    panels: list[Panel] = []
    for name, img, member, label in (("source", v.src, "src", "source"), ("target", v.tgt, "tgt", "target")):
        t = m.get("src_time" if name == "source" else "tgt_time")
        lab = f"{label}" + (f" (frame {m.get(member + '_frame')}, t={t:.2f} s)" if t is not None else "")
        panels.append(
            Panel(name, lab, v.disp(img)) if img is not None else v.missing(name, label, f"{member} image", None)
        )
    for g in (plan_signals() if stages is None else plan_signals(stages)).values():
        if g.draw is not None:
            panels.extend(g.draw(v))
    order = {name: i for i, name in enumerate(panel_names(stages))}
    return sorted(panels, key=lambda p: order[p.name])


def error_panels(key: str, err: Exception, width: int = 256, height: int = 192) -> list[Panel]:
    """Placeholder panels for a sample that could not be read."""
    msg = f"could not read {key}: {type(err).__name__}: {err}"
    return [Panel(n, f"{n} — unreadable", placeholder(height, width, msg), msg) for n in PANELS]


def contact_sheet(
    sample: Sample, width: int = 320, cols: int = 3, ds: QCDataset | None = None, stages: tuple | None = None
) -> np.ndarray:
    """One image of every panel of ``sample`` (labelled, ``cols`` per row) under a header with the key
    and its numbers: what ``vid2pair inspect --key`` writes. ``stages``: see :func:`render_panels`."""
    panels = render_panels(sample, width, ds, stages)
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
    return label_image(grid, f"{sample.key} ({sample.shard}) | {sample_caption(sample, stages)}", bar_color=(0, 0, 0))


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


def inspect_key(out_dir, key: str, png_path=None, width: int = 320, stages: tuple | None = None) -> tuple[str, Path]:
    """The sample's meta (and drag / region-drag json) as text, and its contact sheet written to
    ``png_path`` (default ``<out_dir>/qc/<key>.png``; ``./vid2pair-qc/<key>.png`` for an object-store
    output). Raises :class:`SampleNotFound` (a KeyError) for an unknown key, FileNotFoundError for a
    missing output or shard. ``stages``: the pipeline that wrote it (default the stage graph), whose
    signals are drawn and listed."""
    ds = QCDataset(out_dir, stages)
    s = ds.load(key)
    if png_path is None:
        png_path = (Path("vid2pair-qc") if ds.out.remote else ds.out.path / "qc") / f"{key}.png"
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    png_path.write_bytes(encode_image(contact_sheet(s, width, ds=ds, stages=stages), "png"))
    lines = [
        f"{key}  (shard {s.shard}, {len(s.members)} members: {', '.join(sorted(s.members))})",
        sample_caption(s, stages),
        "signals: " + (", ".join(s.meta.get("signals") or []) or "none"),
        "",
        "meta.json:",
        _pretty(s.meta),
    ]
    for m in sorted(m for m in s.members if m.endswith(".json") and m != "meta.json"):  # drag.json, region_drag.json
        lines += ["", f"{m}:", _pretty(s.json(m))]
    miss = s.missing(stages)
    if miss:
        lines += ["", "missing signals: " + "; ".join(f"{m} ({ds.signal_note(m, s.meta)})" for m in miss)]
    lines += ["", f"contact sheet: {png_path}"]
    return "\n".join(lines), png_path


#: the overview tables and figures, in :mod:`vid2pair.pipeline.qc_figures` (read as ``qc.<name>``)
_FIGURES = frozenset(
    (
        "summary_table",
        "rejects_table",
        "signals_table",
        "fig_rejects",
        "quality_order",
        "fig_quality",
        "fig_histograms",
        "fig_gallery",
        "QUALITY_METRICS",
        "_static_scores",
        "_hist",
    )
)


def __getattr__(name: str):
    if name in _FIGURES:
        from vid2pair.pipeline import qc_figures

        return getattr(qc_figures, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
