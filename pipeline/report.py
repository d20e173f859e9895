"""``vid2pair report``: one self-contained HTML file to look at an output before training on it.

Everything is inline (CSS in a ``<style>`` element, figures as base64 PNG, gallery panels as base64
JPEG thumbnails, no JavaScript, nothing fetched), so the file opens from a cluster's shared disk or
a copy on a laptop. All rendering is pipeline/qc.py's; this module only lays it out.
"""

from __future__ import annotations

import html
import json
import sys
import time
from pathlib import Path

from vid2pair.pipeline import qc

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:16px 24px;color:#1d1d1f;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3 a{color:inherit;text-decoration:none}
h3{font-size:13px;margin:0 0 2px;font-family:Menlo,Consolas,monospace;word-break:break-all}
.sub,.note{color:#555;font-size:13px}.note{margin:4px 0 10px}
nav a{margin-right:14px;font-size:13px}
table{border-collapse:collapse;font-size:12px;margin:6px 0}
td,th{border:1px solid #ddd;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-variant-numeric:tabular-nums}
.warn{color:#b00020}
.cols{display:flex;flex-wrap:wrap;gap:0 32px;align-items:flex-start}.cols>div{min-width:0;max-width:100%}
img.fig{max-width:100%;height:auto;border:1px solid #eee}
section.pair{margin:14px 0 18px;padding:8px 10px;border:1px solid #e3e3e3;border-radius:6px;background:#fafafa}
.cap{font-size:12px;color:#333;margin:2px 0 6px}
.row{display:grid;grid-template-columns:repeat(5,minmax(0,1fr));gap:6px;max-width:calc(5 * var(--w) + 24px)}
@media (min-width:2000px){.row{grid-template-columns:repeat(9,minmax(0,1fr));max-width:calc(9 * var(--w) + 48px)}}
@media (max-width:900px){.row{grid-template-columns:repeat(3,minmax(0,1fr))}}
figure{margin:0;min-width:0}
figure img{display:block;width:100%;height:auto;background:#444}
figcaption{font-size:11px;color:#333;line-height:1.25;margin-top:2px}
figcaption.missing{color:#b00020}
.legend{font-size:12px;color:#333;background:#f6f6f6;padding:6px 10px;border-radius:4px}
.sw{display:inline-block;width:10px;height:10px;border:1px solid #888;margin:0 3px 0 8px;vertical-align:-1px}
pre{font-size:11px;background:#f6f6f6;padding:8px;overflow:auto;max-height:480px}
code{font-size:12px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _table(df, num_cols=(), warn_col: str | None = None) -> str:
    if df is None or not len(df):
        return '<p class="note">(none)</p>'
    head = "".join(f"<th>{_e(c)}</th>" for c in df.columns)
    rows = []
    for _, r in df.iterrows():
        cells = []
        for c in df.columns:
            cls = "num" if c in num_cols else ("warn" if c == warn_col and str(r[c]) else "")
            cells.append(f'<td class="{cls}">{_e(r[c])}</td>' if cls else f"<td>{_e(r[c])}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _img(data: bytes, mime: str, alt: str, cls: str = "fig", width: int | None = None) -> str:
    w = f' width="{width}"' if width else ""
    return f'<img class="{cls}" src="{qc.data_uri(data, mime)}" alt="{_e(alt)}"{w}>'


def _extremes(ds: qc.QCDataset, meta) -> str:
    """The top key per metric (index columns over every sample; meta metrics over the meta subset)."""
    import pandas as pd

    rows = []
    for metric, label, frame in (
        ("flow_p90", "largest motion (flow p90, px)", ds.index),
        ("flow_max", "largest single motion (flow max, px)", ds.index),
        ("dt", "largest Δt (s)", ds.index),
        ("coarse_hole_frac", "biggest coarse-edit holes (fraction)", meta),
        ("collage_hole_frac", "biggest collage holes (fraction)", meta),
        ("drag_len_max", "longest drag (px)", meta),
        ("sketch_stroke_frac", "densest sketch (fraction)", meta),
    ):
        if frame is None or not len(frame) or metric not in frame:
            continue
        top = frame[["key", metric]].dropna().sort_values(metric, ascending=False, kind="stable").head(1)
        for k, v in zip(top["key"], top[metric]):
            rows.append((label, f"{float(v):.4g}", k))
    if not rows:
        return '<p class="note">(no samples)</p>'
    return _table(pd.DataFrame(rows, columns=["metric", "value", "key"]), num_cols=("value",))


def _gallery(ds: qc.QCDataset, keys: list[str], thumb: int, quality: int) -> tuple[str, int]:
    """Gallery sections for ``keys`` and the number of <img> written."""
    parts, n_img = [], 0
    for i in range(0, len(keys), 8):  # load 8 at a time: bounded memory whatever n
        batch = keys[i : i + 8]
        try:
            samples = ds.load_many(batch)
        except Exception:  # one bad sample / shard must not hide the others
            samples = []
            for k in batch:
                try:
                    samples.append(ds.load(k))
                except Exception as e:  # noqa: BLE001 - shown in the report
                    samples.append(e)
        for j, (k, s) in enumerate(zip(batch, samples)):
            if isinstance(s, Exception):
                panels, cap = qc.error_panels(k, s, thumb, int(thumb * 0.75)), f"could not read: {s}"
            else:
                try:
                    panels, cap = qc.render_panels(s, thumb, ds), qc.sample_caption(s)
                except Exception as e:  # noqa: BLE001
                    panels, cap = qc.error_panels(k, e, thumb, int(thumb * 0.75)), f"could not render: {e}"
            figs = []
            for p in panels:
                cls = ' class="missing"' if p.missing else ""
                figs.append(
                    f"<figure>{_img(qc.encode_image(p.image, 'jpeg', quality), 'image/jpeg', p.label, 'p')}"
                    f"<figcaption{cls}>{_e(p.label)}</figcaption></figure>"
                )
                n_img += 1
            parts.append(
                f'<section class="pair" id="s-{_e(k)}"><h3><a href="#s-{_e(k)}">{i + j + 1}. {_e(k)}</a></h3>'
                f'<p class="cap">{_e(cap)}</p><div class="row">{"".join(figs)}</div></section>'
            )
    return "\n".join(parts), n_img


def _reject_previews(ds: qc.QCDataset) -> tuple[str, int]:
    """The kept previews of rejected pairs (output.reject_previews), grouped by stage and reason."""
    r = ds.rejects
    if not len(r) or "preview" not in r:
        return '<p class="note">No previews (an output built before output.reject_previews existed).</p>', 0
    r = r[r["preview"].fillna("").astype(str) != ""]
    if not len(r):
        n_pair = int((ds.rejects["level"] == "pair").sum()) if "level" in ds.rejects else 0
        return f'<p class="note">No previews kept ({n_pair} pair-level rejects; output.reject_previews=0?).</p>', 0
    parts, n_img = [], 0
    for (stage, reason), g in r.groupby(["stage", "reason"], sort=True):
        figs = []
        for _, row in g.iterrows():
            try:
                data = ds.out.read_bytes(str(row["preview"]))
            except Exception as e:  # noqa: BLE001 - shown in the report
                figs.append(f'<p class="note warn">{_e(row["key"])}: preview unreadable ({_e(e)})</p>')
                continue
            figs.append(
                f'<figure style="max-width:480px">{_img(data, "image/jpeg", row["key"], "p")}'
                f"<figcaption><b>{_e(row['key'])}</b><br>{_e(row['detail'])}</figcaption></figure>"
            )
            n_img += 1
        parts.append(f'<h3>{_e(stage)}: {_e(reason)} ({len(g)} shown)</h3><div class="cols">{"".join(figs)}</div>')
    note = (
        '<p class="note">Source | target | a signal the pair had (coarse edit, collage, sketch or flow '
        "magnitude), for up to <code>output.reject_previews</code> rejected pairs, at most a sixth per reason: "
        "what each rule throws away.</p>"
    )
    return note + "\n".join(parts), n_img


def build_report(
    out_dir,
    html_path=None,
    n: int = 50,
    seed: int = 0,
    meta_sample: int = 500,
    thumb: int = 240,
    quality: int = 80,
    sort: str | None = None,
) -> Path:
    """Write the QC report of ``out_dir`` to ``html_path`` (default ``<out_dir>/qc/report.html``;
    ``./vid2pair-qc/report.html`` for an object-store output) and return its path.

    Overview over the whole index (summary, rejects, Δt / flow / static-camera / quality
    histograms); drag, hole, sketch, region and track statistics over a random ``meta_sample``
    samples (their json members only); previews of rejected pairs; a gallery of ``n`` samples,
    ``thumb`` px wide JPEG panels: random (``seed``), or the worst ``n`` by the index column ``sort``
    (a quality score such as ``q_unexplained_frac``)."""
    t0 = time.time()
    ds = qc.QCDataset(out_dir)
    if html_path is None:
        html_path = (Path("vid2pair-qc") if ds.out.remote else ds.out.path / "qc") / "report.html"
    html_path = Path(html_path)
    meta = ds.meta_table(max_samples=meta_sample, seed=seed)
    if sort:
        keys = qc.quality_order(ds, sort)[: max(0, n)]
    else:
        keys = ds.sample_keys(n, seed) if n > 0 else []
    n_all = len(ds)

    overview_imgs = [
        _img(qc.fig_to_png(qc.fig_rejects(ds)), "image/png", "rejects by stage and reason"),
        _img(qc.fig_to_png(qc.fig_histograms(ds, meta)), "image/png", "distributions"),
        _img(qc.fig_to_png(qc.fig_quality(ds)), "image/png", "quality scores"),
    ]
    previews, n_preview_img = _reject_previews(ds)
    sig = qc.signals_table(ds, meta)
    missing = sig[sig["samples with it"] < sig["of"]] if len(meta) else sig.iloc[0:0]
    miss_note = ""
    if len(missing):
        miss_note = (
            '<p class="note warn">Missing signals: '
            + "; ".join(
                f"<b>{_e(r.signal)}</b> in {r.of - r['samples with it']} of {r.of} samples ({_e(r.note)})"
                for _, r in missing.iterrows()
            )
            + "</p>"
        )
    if n_all:
        gallery, n_gallery_img = _gallery(ds, keys, thumb, quality)
        gallery_intro = (
            f'<p class="note">{len(keys)} random samples of {n_all} (seed {seed}), in key order.</p>'
            if not sort
            else f'<p class="note">The {len(keys)} samples of {n_all} with the worst '
            f"<code>{_e(sort)}</code>, worst first.</p>"
        )
    else:
        gallery, n_gallery_img = "", 0
        gallery_intro = (
            '<p class="note warn"><b>No samples in this output.</b> '
            f'{len(ds.rejects)} reject(s): see <a href="#rejects">Rejects</a> for why.</p>'
        )
    sub = f" (random {len(meta)} of {n_all})" if len(meta) < n_all else ""
    legend = (
        '<p class="legend">Panels: <b>flow</b> colour wheel (hue = direction, saturation = magnitude, '
        "white = still) · <b>sketch</b> strokes in green on the darkened target · <b>drags</b>: disc = "
        "handle, arrow head = where it goes (same colour = same point on source and target), drag mask "
        "tinted blue · <b>holes</b> tinted magenta in the coarse edit and the collage · "
        "<b>region drags</b> tinted by type:"
        + "".join(f'<span class="sw" style="background:rgb{qc.TYPE_COLORS[t]}"></span>{t}' for t in qc.REGION_TYPES)
        + "</p>"
    )
    cfg = json.dumps(ds.config, indent=1, default=str) if ds.config else "(no config found)"
    status = (
        ""
        if ds.summary
        else (
            '<p class="note warn"><b>No summary.json</b>: the run did not finish; '
            "everything below is from the committed shards.</p>"
        )
    )
    doc = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vid2pair QC: {_e(ds.out_dir)}</title>
<style>{_CSS}
figure{{--w:{thumb}px}}</style></head>
<body>
<h1>vid2pair QC report</h1>
<p class="sub">{_e(ds.out_dir)} · {n_all} samples · {len(ds.rejects)} rejects · generated
{_e(time.strftime("%Y-%m-%d %H:%M:%S"))} by <code>vid2pair report --n {n} --seed {seed}</code></p>
<nav><a href="#summary">Summary</a><a href="#rejects">Rejects</a><a href="#signals">Signals</a>
<a href="#distributions">Distributions</a><a href="#quality">Quality</a><a href="#extremes">Extremes</a>
<a href="#rejected">Rejected pairs</a><a href="#gallery">Gallery</a>
<a href="#config">Config</a></nav>
{status}
<div class="cols">
<div><h2 id="summary">Run summary</h2>
{_table(qc.summary_table(ds))}</div>
<div><h2 id="rejects">Rejects</h2>
{overview_imgs[0]}
{_table(qc.rejects_table(ds), num_cols=("count",))}</div>
</div>
<div class="cols">
<div><h2 id="signals">Signals</h2>
<p class="note">Which members the samples carry{_e(sub)}.</p>
{miss_note}
{_table(sig, num_cols=("samples with it", "of"), warn_col="note")}</div>
<div><h2 id="extremes">Extremes</h2>
<p class="note">The sample with the largest value of each metric; look at one with
<code>vid2pair inspect {_e(ds.out_dir)} --key KEY</code>.</p>
{_extremes(ds, meta)}</div>
</div>
<h2 id="distributions">Distributions</h2>
<p class="note">Δt, flow and static-camera scores: every sample (and the shots rejected as camera_moving);
drags, holes, sketch, regions, tracks: {_e(f"a random {len(meta)} of {n_all} samples" if sub else "every sample")}.</p>
{overview_imgs[1]}
<h2 id="quality">Quality scores</h2>
<p class="note">The quality stage's scores of every written sample (the <code>q_*</code> index columns; re-filter
with them without rebuilding, e.g. <code>vid2pair report OUT --sort q_unexplained_frac</code> for the worst).</p>
{overview_imgs[2]}
<h2 id="rejected">Rejected pairs</h2>
{previews}
<h2 id="gallery">Gallery</h2>
{gallery_intro}
{legend if n_all else ""}
{gallery}
<h2 id="config">Config</h2>
<details><summary>the run's resolved config</summary><pre>{_e(cfg)}</pre></details>
<p class="sub">{3 + n_preview_img + n_gallery_img} images, built in {time.time() - t0:.1f} s.</p>
</body></html>
"""
    html_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = html_path.with_name(html_path.name + ".tmp")
    tmp.write_text(doc, encoding="utf-8")
    tmp.replace(html_path)
    return html_path


def cmd_report(a) -> int:
    try:
        p = build_report(
            a.output_dir,
            a.html,
            n=a.n,
            seed=a.seed,
            meta_sample=a.meta_sample,
            thumb=a.thumb,
            quality=a.quality,
            sort=a.sort,
        )
    except (FileNotFoundError, KeyError, ValueError) as e:
        print(f"vid2pair: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {p.resolve()} ({p.stat().st_size / 1e6:.1f} MB)")
    return 0


def report_add_subparser(subparsers) -> None:
    """Register ``vid2pair report <output_dir> [--html PATH] [--n 50] [--seed 0]``."""
    r = subparsers.add_parser(
        "report",
        help="one self-contained HTML file: summary, rejects, distributions, "
        "a gallery of random pairs with every signal drawn",
    )
    r.add_argument("output_dir")
    r.add_argument("--html", help="where to write it (default: <output_dir>/qc/report.html)")
    r.add_argument("--n", type=int, default=50, help="random pairs in the gallery (default 50)")
    r.add_argument("--seed", type=int, default=0, help="which random pairs (default 0)")
    r.add_argument(
        "--meta-sample",
        type=int,
        default=500,
        help="samples whose json members feed the drag/hole/sketch/region statistics (default 500)",
    )
    r.add_argument("--thumb", type=int, default=240, help="gallery panel width in px (default 240)")
    r.add_argument("--quality", type=int, default=80, help="JPEG quality of the gallery panels (default 80)")
    r.add_argument(
        "--sort",
        metavar="COLUMN",
        help="gallery of the worst --n samples by an index column, e.g. "
        "q_unexplained_frac or q_fb_consistent (default: random)",
    )
    r.set_defaults(func=cmd_report)
