"""The QC overview: the run summary, the rejects and signals tables, and the figures (reject reasons,
quality scores, histograms, the gallery) of ``vid2pair report`` and the notebook. Plain
:class:`matplotlib.figure.Figure` objects (no pyplot state). Also reachable as ``qc.<name>``."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from vid2pair.pipeline.plan import signals as plan_signals
from vid2pair.pipeline.qc import PANELS, QCDataset, Sample, render_panels


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
    for sig, members in ((n, g.members) for n, g in ds.signals.items()):
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


#: the pair rules' scores the report plots: (column, title, the quality.* thresholds drawn, which end
#: is worse); :func:`quality_metrics` adds those the signals declare (:attr:`Signal.scores`)
PAIR_QUALITY_METRICS: tuple[tuple[str, str, tuple[str, ...], str], ...] = (
    ("q_changed_frac", "changed fraction of the frame", ("min_changed_frac", "max_changed_frac"), "low"),
    ("q_fb_consistent", "forward-backward consistent (moving)", ("min_fb_consistent",), "low"),
    ("q_unexplained_frac", "unexplained share of the change", ("max_unexplained_frac",), "high"),
    ("q_unexplained_blob_frac", "largest unexplained region (frame)", ("max_unexplained_blob_frac",), "high"),
    ("q_camera_shift_px", "background shift src -> tgt (px)", (), "high"),
)


def quality_metrics(signals: dict | None = None) -> tuple[tuple[str, str, tuple[str, ...], str], ...]:
    """The quality scores the report plots: the pair rules', then each titled :class:`Score` of
    ``signals`` (default the stage graph's)."""
    sigs = plan_signals() if signals is None else signals
    own = ((f"q_{sc.name}", sc.title, sc.thresholds, sc.worse) for g in sigs.values() for sc in g.scores if sc.title)
    return (*PAIR_QUALITY_METRICS, *own)


#: :func:`quality_metrics` of the stage graph
QUALITY_METRICS = quality_metrics()


def quality_order(ds: QCDataset, metric: str) -> list[str]:
    """Sample keys sorted worst first by a quality (or any index) column: ascending for the metrics
    whose low end is worse (:data:`QUALITY_METRICS`), descending otherwise; samples without it last."""
    idx = ds.index
    if metric not in idx:
        raise KeyError(
            f"no column {metric!r} in the index; quality columns: "
            f"{', '.join(c for c in idx.columns if c.startswith('q_')) or 'none'}"
        )
    worse = {c: w for c, _, _, w in quality_metrics(ds.signals)}.get(metric, "high")
    df = idx[["key", metric]].copy()
    return list(df.sort_values(metric, ascending=worse == "low", kind="stable", na_position="last")["key"])


def fig_quality(ds: QCDataset):
    """Histograms of the quality stage's scores (index columns, every sample) with the thresholds."""
    metrics = [m for m in quality_metrics(ds.signals) if m[0] in ds.index]
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


class PlotView:
    """What a signal's histogram panel (:attr:`vid2pair.core.stage.Metrics.plot`) draws with: ``ax``
    (a matplotlib Axes), ``col(name)`` (a meta-table column's values, lists flattened), ``hist(series,
    title, xlabel)``, ``missing()`` (the placeholder saying why there is nothing), ``sub`` (the title's
    sample note)."""

    def __init__(self, ax, table, sub: str, why: str):
        self.ax, self.table, self.sub, self.why = ax, table, sub, why

    def col(self, name: str) -> np.ndarray:
        if name not in self.table or not len(self.table):
            return np.array([])
        vals = self.table[name].dropna().tolist()
        if any(isinstance(v, (list, tuple, np.ndarray)) for v in vals):
            vals = [x for v in vals for x in (v if isinstance(v, (list, tuple, np.ndarray)) else [v])]
        return np.asarray(vals, dtype=float)

    def hist(self, series, title: str, xlabel: str, log: bool = False) -> None:
        _hist(self.ax, series, title + self.sub, xlabel, self.why, log=log)

    def missing(self) -> None:
        _no_data(self.ax, self.why)


def fig_histograms(ds: QCDataset, meta=None):
    """Histograms: Δt, flow magnitude (p50/p90/p99), moving fraction, static-camera score (kept and
    rejected shots, threshold), then each signal's own panel (:attr:`Metrics.plot`: drag lengths,
    sketch density, hole fractions of the coarse edit and the collage, region drag types, track
    quality). Index columns cover every sample; meta-derived panels cover ``meta`` (a
    :meth:`QCDataset.meta_table`, default a random 500)."""
    if meta is None:
        meta = ds.meta_table()
    idx = ds.index
    n_meta, n_all = len(meta), len(idx)
    sub = f" (random {n_meta} of {n_all})" if n_meta < n_all else ""
    plotted = [(n, g) for n, g in ds.signals.items() if g.metrics is not None and g.metrics.plot is not None]
    rows = -(-(4 + len(plotted)) // 3)
    fig = _new_fig(13, 10 * rows / 3)
    axs = fig.subplots(rows, 3)

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
    for (name, g), ax in zip(plotted, axs.ravel()[4:]):  # each signal's own panel (Signal.metrics.plot)
        g.metrics.plot(PlotView(ax, meta, sub, none or f"no {name} in the samples ({ds.signal_note(name)})"))
    for ax in axs.ravel()[4 + len(plotted) :]:
        ax.set_visible(False)
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
