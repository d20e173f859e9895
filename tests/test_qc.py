"""QC: drawing where the points are, data access by key, the HTML report (rendered in headless
Chromium), the notebook (executed headless), outputs with missing signals or no samples, inspect_key."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from vid2pair.pipeline import qc

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "artifacts"
NOTEBOOK = ROOT / "notebooks" / "qc.ipynb"
IMG_RE = re.compile(r'<img\b[^>]*\bsrc="data:image/(?:png|jpeg);base64,[A-Za-z0-9+/=]+"')


# ---------------------------------------------------------------- outputs, built once per module


def _build(out: Path, inputs: str, *overrides: str) -> Path:
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.runners import build

    cfg = load_config("demo", ["runner.name=local", "runner.progress=false", *overrides])
    build(cfg, inputs, out, log_summary=False)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from vid2pair.pipeline.synthetic import make_demo_corpus

    d = tmp_path_factory.mktemp("qc_videos")
    paths = make_demo_corpus(d, n_static=2, n_moving_camera=1, seed=0)
    return d, paths


@pytest.fixture(scope="module")
def demo_out(corpus, tmp_path_factory):
    return _build(tmp_path_factory.mktemp("qc") / "out", str(corpus[0]))


@pytest.fixture(scope="module")
def nosig_out(corpus, tmp_path_factory):
    """Without collage (and region drags) and tracking (drags, tracks)."""
    return _build(
        tmp_path_factory.mktemp("qc_nosig") / "out", str(corpus[0]), "collage.enabled=false", "track.enabled=false"
    )


@pytest.fixture(scope="module")
def empty_out(corpus, tmp_path_factory):
    """Only the panning-camera clip: every shot is rejected, zero samples."""
    pan = [p for p in corpus[1] if "camera" in Path(p).name]
    assert pan, corpus[1]
    out = _build(tmp_path_factory.mktemp("qc_empty") / "out", str(pan[0]))
    assert qc.QCDataset(out).summary["samples"] == 0
    return out


# ---------------------------------------------------------------- drawing


def _dist_to_segment(px: np.ndarray, a, b) -> np.ndarray:
    a, b = np.asarray(a, float), np.asarray(b, float)
    ab = b - a
    t = np.clip(((px - a) @ ab) / max(ab @ ab, 1e-9), 0, 1)
    return np.linalg.norm(px - (a + t[:, None] * ab), axis=1)


def test_draw_drag_arrows_draws_exactly_at_the_points():
    img = np.full((80, 100, 3), 128, np.uint8)
    red, blue = (255, 0, 0), (0, 0, 255)
    pts = [
        {"source": [10, 40], "target": [70, 40]},  # horizontal
        {"source": [85.0, 10.0], "target": [85.0, 60.0]},
    ]  # vertical
    draw = qc.draw_drag_arrows(img, pts, [red, blue])
    assert draw is not img and (img == 128).all(), "the input must not be modified"
    # both ends of each arrow carry its colour exactly, and so does the shaft
    for (x, y), col in (
        ((10, 40), red),
        ((70, 40), red),
        ((40, 40), red),
        ((85, 10), blue),
        ((85, 60), blue),
        ((85, 35), blue),
    ):
        assert tuple(draw[y, x]) == col, (x, y, draw[y, x])
    # the colours appear only near their own arrow, and nothing changes far from the arrows
    ys, xs = np.nonzero((draw != 128).any(axis=2))
    changed = np.stack([xs, ys], 1).astype(float)
    d = np.minimum(_dist_to_segment(changed, (10, 40), (70, 40)), _dist_to_segment(changed, (85, 10), (85, 60)))
    assert d.max() <= 9.0, d.max()  # disc radius 3 + outline, arrow head <= 8 px
    for col, seg in ((red, ((10, 40), (70, 40))), (blue, ((85, 10), (85, 60)))):
        ys, xs = np.nonzero((draw == col).all(axis=2))
        assert len(xs) > 20
        assert _dist_to_segment(np.stack([xs, ys], 1).astype(float), *seg).max() <= 9.0
    assert tuple(draw[5, 40]) == (128, 128, 128) and tuple(draw[75, 5]) == (128, 128, 128)


def test_draw_drag_arrows_accepts_arrays_and_subpixel_points():
    img = np.zeros((50, 60, 3), np.uint8)
    green = (0, 255, 0)
    a = qc.draw_drag_arrows(img, np.array([[12.4, 30.6, 47.6, 8.4]]), green, outline=False)
    b = qc.draw_drag_arrows(img, [{"source": [12.4, 30.6], "target": [47.6, 8.4]}], green, outline=False)
    np.testing.assert_array_equal(a, b)
    assert tuple(a[31, 12]) == green and tuple(a[8, 48]) == green  # nearest pixel centres
    # a zero-length drag is a disc at the point
    c = qc.draw_drag_arrows(img, [{"source": [30, 25], "target": [30, 25]}], green, outline=False)
    assert tuple(c[25, 30]) == green and (c[:, :, 1] > 0).sum() <= 49
    with pytest.raises(ValueError):
        qc.draw_drag_arrows(img, np.zeros((3, 4)), [green, green])


def test_scale_points_and_overlays():
    np.testing.assert_allclose(qc.scale_points(np.array([[10.0, 20.0]]), 2.0), [[20.5, 40.5]])
    np.testing.assert_allclose(qc.scale_points(np.array([[0.0, 0.0]]), 0.5), [[-0.25, -0.25]])
    img = np.full((20, 30, 3), 100, np.uint8)
    mask = np.zeros((20, 30), np.uint8)
    mask[5:10, 5:15] = 255
    o = qc.overlay_mask(img, mask, (255, 0, 255), alpha=1.0)
    assert (o[5:10, 5:15] == (255, 0, 255)).all() and (o[mask == 0] == 100).all()
    sk = np.zeros((20, 30), np.uint8)
    sk[3, 4:20] = 255
    s = qc.overlay_sketch(img, sk)
    assert (s[3, 4:20] == qc.SKETCH_COLOR).all() and (s[10, 10] < 100).all()  # strokes on the darkened frame
    img = np.full((60, 80, 3), 100, np.uint8)
    labels = np.zeros((60, 80), np.uint8)
    labels[30:60, 0:30] = 1
    r = qc.draw_region_drags(
        img,
        labels,
        [{"type": "rotation", "mask_index": 0, "center": [10, 45], "handles": [[10, 45]], "targets": [[24, 54]]}],
        alpha=1.0,
    )
    assert tuple(r[57, 2]) == qc.TYPE_COLORS["rotation"]  # inside the region, away from text and arrow
    assert tuple(r[45, 10]) == tuple(r[54, 24]) == qc.TYPE_COLORS["rotation"]  # the handle -> target arrow
    assert tuple(r[5, 5]) == tuple(r[55, 75]) == (100, 100, 100)


def test_gallery_panels_draw_the_samples_drags_where_drag_json_says(demo_out):
    ds = qc.QCDataset(demo_out)
    s = next(x for x in ds.samples(n=len(ds), seed=0) if x.json("drag") and x.json("drag")["points"])
    W = s.meta["size"][0]
    panels = {p.name: p for p in qc.render_panels(s, width=W, ds=ds)}  # display scale 1
    assert [p.name for p in qc.render_panels(s, width=W, ds=ds)] == list(qc.PANELS)
    pts = s.json("drag")["points"]
    last = qc.PALETTE[(len(pts) - 1) % len(qc.PALETTE)]  # drawn last: never overdrawn
    for name in ("drag_src", "drag_tgt"):
        for which in ("source", "target"):
            x, y = (int(round(v)) for v in pts[-1][which])
            if 0 <= x < W and 0 <= y < s.meta["size"][1]:
                assert tuple(panels[name].image[y, x]) == last, (name, which)
    assert all(p.missing is None for p in panels.values()), [p.label for p in panels.values() if p.missing]
    # half-size thumbnails: the same point lands on the scaled pixel
    half = {p.name: p for p in qc.render_panels(s, width=W // 2, ds=ds)}
    x, y = qc.scale_points(np.array(pts[-1]["source"]), 0.5)
    assert tuple(half["drag_src"].image[int(round(y)), int(round(x))]) == last


# ---------------------------------------------------------------- data access


def test_load_reads_only_the_indexed_shard_and_filters(demo_out, monkeypatch):
    ds = qc.QCDataset(demo_out)
    assert len(ds) > 0 and ds.index["shard"].nunique() >= 2
    key = ds.index["key"].iloc[-1]
    calls = []
    real = qc._read_shard
    monkeypatch.setattr(
        qc,
        "_read_shard",
        lambda out, shard, keys, suffixes=None: calls.append(shard) or real(out, shard, keys, suffixes),
    )
    s = ds.load(key)
    assert calls == [ds.row(key)["shard"]]
    assert s.key == key and s.image("src").ndim == 3 and s.meta["key"] == key
    assert s.array("flow").shape[2] == 2 and s.missing() == []
    keys = ds.index["key"].tolist()[::-1]
    assert [x.key for x in ds.load_many(keys)] == keys
    # seeded random subsets are reproducible
    assert ds.sample_keys(3, seed=1) == ds.sample_keys(3, seed=1)
    assert len(ds.sample_keys(3, seed=1)) == 3
    # filters
    clip = ds.index["clip_id"].iloc[0]
    assert set(ds.select(clip=clip)["clip_id"]) == {clip}
    assert len(ds.select(clip=clip.split("-")[0])) == len(ds.select(clip=clip))  # substring of the clip id
    top = ds.select(metric="flow_p90", top=2)
    assert top["flow_p90"].tolist() == sorted(ds.index["flow_p90"], reverse=True)[:2]
    rng = ds.select(metric="dt", lo=1.2, hi=2.0)
    assert ((rng["dt"] >= 1.2) & (rng["dt"] <= 2.0)).all()
    holes = ds.select(metric="coarse_hole_frac", top=3)
    assert holes["coarse_hole_frac"].is_monotonic_decreasing and len(holes) == min(3, len(ds))
    assert ds.select(key=key)["key"].tolist() == [key]
    with pytest.raises(ValueError, match="unknown metric"):
        ds.select(metric="nope")
    with pytest.raises(KeyError, match="did you mean"):
        ds.load(key + "0")


def test_overview_tables_and_figures(demo_out):
    from matplotlib.figure import Figure

    ds = qc.QCDataset(demo_out)
    st = qc.summary_table(ds)
    assert dict(zip(st["field"], st["value"]))["samples"] == str(len(ds))
    rt = qc.rejects_table(ds)
    assert ("static_camera", "camera_moving") in set(zip(rt["stage"], rt["reason"]))
    meta = ds.meta_table()
    sig = qc.signals_table(ds, meta)
    assert (sig["samples with it"] == len(ds)).all()
    for fig in (qc.fig_rejects(ds), qc.fig_histograms(ds, meta), qc.fig_gallery(ds.samples(2), ds=ds)):
        assert isinstance(fig, Figure)
        assert qc.fig_to_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
    kept, rej = qc._static_scores(ds)
    assert len(kept) >= 1 and len(rej) == 1 and rej[0] > ds.config_value("static_camera.max_shift")


# ---------------------------------------------------------------- inspect --key


def test_inspect_key_prints_meta_and_writes_png(demo_out, tmp_path):
    import cv2

    ds = qc.QCDataset(demo_out)
    key = ds.index["key"].iloc[0]
    text, png = qc.inspect_key(demo_out, key)
    assert png == Path(demo_out) / "qc" / f"{key}.png" and png.exists()
    assert key in text and '"flow"' in text and '"static_score"' in text and "drag.json" in text
    img = cv2.imread(str(png))
    assert img is not None and img.shape[0] > 400 and img.shape[1] >= 3 * 320 and img.std() > 20
    _, png2 = qc.inspect_key(demo_out, key, png_path=tmp_path / "x.png")
    assert png2 == tmp_path / "x.png" and png2.exists()
    with pytest.raises(KeyError):
        qc.inspect_key(demo_out, "no_such_key")


# ---------------------------------------------------------------- HTML report + headless Chromium


def _chromium() -> str | None:
    for name in (os.environ.get("CHROMIUM"), "chromium", "chromium-browser", "google-chrome"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _headless(profile: Path) -> list[str]:
    """Headless Chromium's command line up to the page-specific flags (skips, or fails in CI, without it)."""
    exe = _chromium()
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (CI must install it: apt-get install -y chromium)")
        pytest.skip("chromium not installed (apt-get install -y chromium); this test is required in CI")
    return [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
    ]


def _screenshot(html: Path, png: Path, tmp_path: Path) -> np.ndarray:
    import cv2

    cmd = _headless(tmp_path / "chromium-profile") + [
        "--hide-scrollbars",
        f"--screenshot={png}",
        "--window-size=1280,2000",
        html.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert png.exists(), f"no screenshot (rc {r.returncode}): {r.stderr[-2000:]}"
    img = cv2.imread(str(png))
    assert img is not None and img.shape[:2] == (2000, 1280)
    return img


def _images_decoded_in_chromium(html: Path, tmp_path: Path) -> tuple[int, int]:
    """(images Chromium decoded with a non-zero natural size, images on the page). The report has no
    scripts, so a copy gets one that counts them on load; --dump-dom prints the resulting DOM."""
    probe = tmp_path / "report_probe.html"
    counter = (
        "<script>window.addEventListener('load', () => { const im = [...document.images]; "
        "document.body.setAttribute('data-decoded', im.filter(i => i.complete && i.naturalWidth > 0)"
        ".length + '/' + im.length); });</script></body>"
    )
    probe.write_text(html.read_text().replace("</body>", counter))
    cmd = _headless(tmp_path / "chromium-profile-dom") + [
        "--virtual-time-budget=20000",
        "--dump-dom",
        probe.resolve().as_uri(),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'data-decoded="(\d+)/(\d+)"', r.stdout)
    assert m, f"no load result in the DOM (rc {r.returncode}): {r.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


def _check_self_contained(text: str) -> None:
    assert "<script" not in text.lower()
    assert not re.search(r'(src|href)="(https?:)?//', text), "external resource"
    assert "<link" not in text.lower()


def test_report_renders_in_headless_chromium(demo_out, tmp_path):
    from vid2pair.pipeline.report import build_report

    n = 5
    html = build_report(demo_out, tmp_path / "report.html", n=n, seed=0)
    text = html.read_text()
    _check_self_contained(text)
    ds = qc.QCDataset(demo_out)
    # rejects chart + histograms + quality histograms + the reject previews + the gallery panels
    expected = 3 + _n_previews(ds) + min(n, len(ds)) * len(qc.PANELS)
    assert len(IMG_RE.findall(text)) == expected == text.count("<img")
    assert html.stat().st_size < 3e6
    for k in ds.sample_keys(n, 0):
        assert k in text
    assert _images_decoded_in_chromium(html, tmp_path) == (expected, expected)
    img = _screenshot(html, tmp_path / "report.png", tmp_path)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(tmp_path / "report.png", ARTIFACTS / "report.png")
    grey = img.mean(axis=2)
    assert grey.std() > 25, "blank screenshot"
    assert (grey < 250).mean() > 0.05, "screenshot almost all white"
    # default location, next to the output
    assert build_report(demo_out, n=1) == Path(demo_out) / "qc" / "report.html"


def _n_previews(ds) -> int:
    """Previews of rejected pairs the output kept (output.reject_previews); the report shows each."""
    r = ds.rejects
    return int((r["preview"].fillna("").astype(str) != "").sum()) if len(r) and "preview" in r else 0


def test_report_subcommand(demo_out, tmp_path, capsys):
    import argparse

    from vid2pair.pipeline.report import report_add_subparser

    parser = argparse.ArgumentParser(prog="vid2pair")
    report_add_subparser(parser.add_subparsers(dest="cmd", required=True))
    a = parser.parse_args(["report", str(demo_out), "--html", str(tmp_path / "cli.html"), "--n", "2", "--seed", "3"])
    assert a.func(a) == 0 and (tmp_path / "cli.html").exists()
    assert str(tmp_path / "cli.html") in capsys.readouterr().out
    n_prev = _n_previews(qc.QCDataset(demo_out))
    assert len(IMG_RE.findall((tmp_path / "cli.html").read_text())) == 3 + n_prev + 2 * len(qc.PANELS)
    a = parser.parse_args(["report", str(tmp_path / "nothing")])
    assert a.func(a) == 2 and "not a vid2pair output" in capsys.readouterr().err


def test_report_and_panels_with_missing_signals(nosig_out, tmp_path):
    from vid2pair.pipeline.report import build_report

    ds = qc.QCDataset(nosig_out)
    s = ds.load(ds.index["key"].iloc[0])
    assert set(s.missing()) == {"drag", "tracks", "collage", "region_drag"}
    panels = {p.name: p for p in qc.render_panels(s, 200, ds)}
    assert len(panels) == len(qc.PANELS)
    for name in ("drag_src", "drag_tgt", "collage", "region_drag"):
        assert panels[name].missing and "missing" in panels[name].label
        assert panels[name].image.shape == panels["source"].image.shape
    assert "collage.enabled=false" in panels["collage"].missing
    assert "track.enabled=false" in panels["drag_src"].missing
    assert panels["coarse"].missing is None and panels["sketch"].missing is None
    html = build_report(nosig_out, tmp_path / "r.html", n=3)
    text = html.read_text()
    assert "collage.enabled=false" in text and "track.enabled=false" in text and "Missing signals" in text
    assert len(IMG_RE.findall(text)) == 3 + _n_previews(ds) + 3 * len(qc.PANELS)
    qc.contact_sheet(s, ds=ds)
    text, png = qc.inspect_key(nosig_out, s.key, png_path=tmp_path / "i.png")
    assert "missing signals" in text and png.exists()


def test_report_with_zero_samples(empty_out, tmp_path):
    from vid2pair.pipeline.report import build_report

    html = build_report(empty_out, tmp_path / "r.html", n=10)
    text = html.read_text()
    _check_self_contained(text)
    assert "No samples in this output" in text and "camera_moving" in text
    assert len(IMG_RE.findall(text)) == 3 + _n_previews(qc.QCDataset(empty_out))
    img = _screenshot(html, tmp_path / "empty.png", tmp_path)
    assert img.mean(axis=2).std() > 10


# ---------------------------------------------------------------- notebook


def test_notebook_is_stored_clean_with_a_parameters_cell():
    import nbformat

    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "store the notebook without outputs"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and "VID2PAIR_QC_DIR" in params[0].source and "out_dir" in params[0].source
    assert all("qc." in c.source or "os.environ" in c.source or "ds." in c.source for c in code)


@pytest.mark.parametrize("which,min_images", [("demo_out", 6), ("empty_out", 6)])
def test_notebook_executes_headless(which, min_images, request, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    out = request.getfixturevalue(which)
    monkeypatch.setenv("VID2PAIR_QC_DIR", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOK.parent)}}
    ).execute()  # raises if a cell errors
    outs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outs if o.output_type == "error"]
    images = [o for o in outs if "image/png" in o.get("data", {})]
    assert len(images) >= min_images, f"{len(images)} figures"
    text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in outs)
    assert str(out) in text


def test_gallery_sort_puts_the_worst_scores_first(demo_out):
    """--sort METRIC: ascending for scores whose low end is worse (a coarse edit's gain), descending
    for the others (the unexplained share); an unknown column is an error naming the q_ columns."""
    ds = qc.QCDataset(demo_out)
    idx = ds.index.set_index("key")
    low = qc.quality_order(ds, "q_coarse_gain_db")
    vals = [v for v in (idx.at[k, "q_coarse_gain_db"] for k in low) if v == v]  # NaN (no coarse edit) last
    assert [v for v in (idx.at[k, "q_coarse_gain_db"] for k in low[: len(vals)])] == vals
    assert len(vals) >= 2 and vals == sorted(vals) and vals[0] < vals[-1]
    high = qc.quality_order(ds, "q_unexplained_frac")
    vals = [idx.at[k, "q_unexplained_frac"] for k in high]
    assert vals == sorted(vals, reverse=True) and sorted(high) == sorted(idx.index)
    with pytest.raises(KeyError, match="q_coarse_gain_db"):
        qc.quality_order(ds, "q_no_such_score")
