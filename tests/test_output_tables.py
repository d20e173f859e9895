"""The output's tables read whole with the usual readers, the per-clip train / eval split, and the
reason a dropped signal is missing (inspect, the report's gallery)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index, read_rejects
from vid2pair.pipeline.runners import build


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    from vid2pair.pipeline.synthetic import make_demo_corpus

    d = tmp_path_factory.mktemp("tables_videos")
    make_demo_corpus(d, n_static=4, n_moving_camera=2, seed=4)
    return d


@pytest.fixture(scope="module")
def out(videos, tmp_path_factory):
    """The demo corpus and two panning clips, one clip a chunk (so the panning clips' chunks have
    no sample: empty index parts), half of the clips in the eval split."""
    d = videos
    o = tmp_path_factory.mktemp("tables") / "out"
    cfg = load_config(
        "demo", ["runner.name=local", "runner.progress=false", "output.eval_frac=0.5", "output.clips_per_shard=1"]
    )
    s = build(cfg, str(d), o, log_summary=False)
    assert s["samples"] >= 6 and s["rejects_total"] > 0
    return o, s


def test_index_and_rejects_read_whole_with_pandas_pyarrow_ray_and_duckdb(out, ray_local):
    o, s = out
    idx, rej = read_index(o), read_rejects(o)
    parts = sorted((o / "index").glob("*.parquet"))
    assert len(parts) == s["work_units"] and any(pq.read_metadata(p).num_rows == 0 for p in parts)
    assert len({pq.read_schema(p) for p in parts}) == 1  # one schema, empty parts too
    assert [p.suffix for p in (o / "rejects").rglob("*") if p.is_file()] == [".parquet"] * len(
        list((o / "rejects").glob("*.parquet"))
    )  # previews live in previews/, beside it
    assert all(str(p).startswith("previews/") and (o / p).exists() for p in rej["preview"] if p)
    for name, want in (("index", idx), ("rejects", rej)):
        whole = pq.read_table(o / name)
        assert whole.num_rows == len(want), name
        pdf = pd.read_parquet(o / name)
        assert len(pdf) == len(want) and set(want.columns) <= set(pdf.columns), name
        assert ray_local.data.read_parquet(str(o / name)).count() == len(want), name
        try:
            import duckdb
        except ImportError:  # an optional reader (the test extra installs it)
            continue
        n = duckdb.sql(f"select count(*) from read_parquet('{o / name}/*.parquet')").fetchall()[0][0]
        assert n == len(want), name
    # every column an index row has is declared (nothing left out), with its type
    assert {"q_changed_frac", "q_coarse_gain_db", "flow_p90", "signals", "split"} <= set(idx.columns)
    assert str(pq.read_table(o / "index").schema.field("q_drag_valid").type) == "int64"


def test_the_split_is_per_clip_and_the_trainer_holds_the_eval_clips_out(out):
    from vid2pair.core.split import split_of
    from vid2pair.trainer.data import expand_shards, index_eval_keys

    o, _ = out
    idx = read_index(o)
    per_clip = idx.groupby("clip_id")["split"].nunique()
    assert (per_clip == 1).all()  # no clip on both sides
    assert set(idx["split"]) == {"train", "eval"}
    for cid, sp in idx.groupby("clip_id")["split"].first().items():
        assert sp == split_of(cid, 0.5)
    shard = next((o / "shards").glob("*.tar"))
    import tarfile

    with tarfile.open(shard) as t:
        m = next(x for x in t.getmembers() if x.name.endswith("meta.json"))
        meta = json.loads(t.extractfile(m).read())
    assert meta["split"] == idx.set_index("key").loc[meta["key"], "split"]
    ek = index_eval_keys(expand_shards(str(o)))
    assert ek == frozenset(idx[idx["split"] == "eval"]["key"])


def test_inspect_and_the_report_count_the_splits(out):
    from vid2pair.pipeline import qc
    from vid2pair.pipeline.inspection import inspect_output

    o, _ = out
    idx = read_index(o)
    text = inspect_output(o)
    n_eval = int((idx["split"] == "eval").sum())
    assert f"eval {n_eval} samples from {idx[idx['split'] == 'eval']['clip_id'].nunique()} clips" in text
    table = qc.summary_table(qc.QCDataset(o))
    row = table[table["field"] == "split"]["value"].iloc[0]
    assert f"eval {n_eval} samples" in row and "train" in row


def test_a_dropped_signal_names_its_own_reject(videos, tmp_path):
    """Not "not produced (stage rejected or skipped it)": the stage, the reason and its numbers. A
    strict hole rule makes the quality stage drop coarse edits from pairs it keeps."""
    from vid2pair.pipeline import qc

    o = tmp_path / "out"
    build(
        load_config("demo", ["runner.name=local", "runner.progress=false", "quality.max_hole_ratio=0.02"]),
        str(videos),
        o,
        log_summary=False,
    )
    ds = qc.QCDataset(o)
    rej = read_rejects(o)
    sig = rej[rej["level"] == "signal"]
    assert len(sig), "the demo corpus drops some signal somewhere"
    row = sig.iloc[0]
    s = ds.load(row["key"])
    name = next(r["signal"] for r in s.meta["signal_rejects"] if r["reason"] == row["reason"])
    want = f"{row['stage']}/{row['reason']}: {row['detail']}"
    assert ds.signal_note(name, s.meta) == want
    text, _ = qc.inspect_key(o, row["key"], png_path=tmp_path / "k.png")
    assert want[:60] in text
    if name in ("coarse", "collage", "sketch"):  # a panel of its own
        panel = next(p for p in qc.render_panels(s, 200, ds) if p.name == name)
        assert panel.missing and want[:40] in panel.missing
    assert Path(o / "summary.json").exists()
