"""End to end on the demo corpus: both runners, accounting, read-back, resume."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import InputError, read_index, read_rejects
from vid2pair.pipeline.runners import build


def _digests(out):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(out, "shards").glob("*.tar"))}


def _all_members(out):
    import tarfile

    got = {}
    for p in sorted(Path(out, "shards").glob("*.tar")):
        with tarfile.open(p) as t:
            got.update({m.name: t.extractfile(m).read() for m in t.getmembers()})
    return got


def _cfg(runner, *more):
    return load_config("demo", [f"runner.name={runner}", "runner.progress=false", *more])


@pytest.fixture(scope="module")
def local_out(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("local")
    s = build(_cfg("local"), str(demo_corpus[0]), out, log_summary=False)
    return out, s


def test_local_run_accounts_for_every_clip(local_out, demo_corpus):
    out, s = local_out
    idx, rej = read_index(out), read_rejects(out)
    sources = {str(p) for p in demo_corpus[1]}
    assert s["inputs"] == len(sources) == 4
    assert s["clips_with_samples"] + s["clips_rejected"] + s["clips_without_samples"] == s["inputs"]
    assert set(idx["source"]) | set(rej["source"]) == sources
    # the static clips give samples; the panning one is rejected by the static-camera stage
    assert s["clips_with_samples"] == 3 and s["samples"] == 9  # per_shot = 3
    pan = rej[rej["source"].str.contains("camera_pan")]
    assert list(pan["stage"]) == ["static_camera"] and list(pan["reason"]) == ["camera_moving"]
    assert s["all_inputs_accounted"]


def test_keys_meta_and_pair_policy(local_out):
    out, _ = local_out
    idx = read_index(out)
    assert idx["key"].is_unique and not idx["key"].str.contains(r"[./\\ ]").any()
    assert ((idx["dt"] >= 1.0) & (idx["dt"] <= 2.5)).all()  # demo: min_gap 1 s .. 2.5 s
    assert ((idx["width"] == 320) & (idx["height"] == 240)).all()


def test_shards_read_back_with_webdataset(local_out):
    import webdataset as wds

    out, _ = local_out
    idx = read_index(out)
    urls = sorted(str(p) for p in Path(out, "shards").glob("*.tar"))
    seen = {}
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb8"):
        meta = sample["meta.json"]  # webdataset decodes .json
        assert sample["src.jpg"].shape == (240, 320, 3) and sample["tgt.jpg"].shape == (240, 320, 3)
        flow = sample["flow.npy"]
        assert flow.shape == (240, 320, 2) and flow.dtype == np.float16
        assert meta["key"] == sample["__key__"] and meta["flow"]["backend"] == "dis"
        assert meta["tgt_frame"] - meta["src_frame"] == round(meta["dt"] * meta["fps"])
        for k in ("source", "shot", "src_time", "tgt_time", "fps", "orig_size", "size", "seed", "versions"):
            assert k in meta
        seen[sample["__key__"]] = Path(sample["__url__"]).name
    assert seen == dict(zip(idx["key"], idx["shard"]))  # index agrees with the tars


def test_ray_runner_gives_identical_shards(local_out, demo_corpus, tmp_path, ray_local):
    out, _ = local_out
    s = build(_cfg("ray"), str(demo_corpus[0]), tmp_path, log_summary=False)
    assert s["samples"] == 9
    assert _digests(tmp_path) == _digests(out)  # byte-identical shards
    a, b = read_index(out), read_index(tmp_path)
    assert list(a["key"]) == list(b["key"])
    ds = ray_local.data.read_webdataset(str(tmp_path / "shards"))
    rows = ds.take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(a["key"])


@pytest.mark.parametrize("writers", ["workers", "driver"])
def test_ray_workers_write_the_shards_and_the_driver_only_commits(local_out, demo_corpus, tmp_path, ray_local, writers):
    """runner.shard_writers=workers: the samples reach the driver as records without their bytes
    (the workers staged them; a Ray task wrote each tar); driver: every byte passes through the
    driver. Both give the local runner's shards, byte for byte, and leave no staging behind."""
    from vid2pair.pipeline.io import OutputWriter, input_root, list_inputs, make_tasks
    from vid2pair.pipeline.runners import run_ray

    out, _ = local_out
    cfg = _cfg("ray", f"runner.shard_writers={writers}")
    sources = list_inputs(str(demo_corpus[0]), cfg.input.extensions)
    tasks, dups = make_tasks(sources, cfg.output.clips_per_shard, input_root(str(demo_corpus[0])))
    w = OutputWriter(tmp_path, cfg, tasks, dups)
    got = {"bytes": 0, "samples": 0}
    add = w.add

    def counting_add(it):
        if hasattr(it, "files"):
            got["samples"] += 1
            got["bytes"] += sum(len(v) for v in it.files.values())
        return add(it)

    w.add = counting_add
    run_ray(cfg, tasks, w)
    w.close()
    assert got["samples"] == 9
    if writers == "workers":
        assert got["bytes"] == 0
    else:
        assert got["bytes"] > 9 * 20_000  # src, tgt, flow and the signals of 9 pairs at 320x240
    assert _digests(tmp_path) == _digests(out)
    assert not (tmp_path / "_staging").exists() or not any((tmp_path / "_staging").rglob("*"))


def test_resume_skips_done_chunks_and_redoes_lost_ones(local_out, tmp_path):
    out, _ = local_out
    work = tmp_path / "out"
    shutil.copytree(out, work)
    corpus = json.loads((work / "summary.json").read_text())  # inputs from the first run
    src_dir = str(Path(read_index(work)["source"].iloc[0]).parent)
    s = build(_cfg("local"), src_dir, work, log_summary=False)
    assert s["new_samples_this_run"] == 0 and s["samples"] == corpus["samples"]
    # lose a chunk (as if the driver died before committing it): it is rebuilt identically
    lost = int((read_index(work)["shard"] == "pairs-000000.tar").sum())
    assert lost > 0
    (work / "_done" / "000000.json").unlink()
    (work / "shards" / "pairs-000000.tar").unlink()
    s = build(_cfg("local"), src_dir, work, log_summary=False)
    assert s["new_samples_this_run"] == lost and s["samples"] == corpus["samples"]
    assert _digests(work) == _digests(out)


def test_changed_config_on_same_output_is_refused(local_out, tmp_path):
    out, _ = local_out
    work = tmp_path / "out"
    shutil.copytree(out, work)
    src_dir = str(Path(read_index(work)["source"].iloc[0]).parent)
    with pytest.raises(InputError, match="different config"):
        build(_cfg("local", "seed=5"), src_dir, work, log_summary=False)


def test_list_inputs_with_missing_and_duplicate(demo_corpus, tmp_path):
    d, paths = demo_corpus
    lst = tmp_path / "clips.txt"
    lst.write_text(f"# my clips\n{paths[0]}\n{paths[0]}\n{tmp_path / 'gone.mp4'}\n")
    s = build(_cfg("local"), str(lst), tmp_path / "out", log_summary=False)
    rej = read_rejects(tmp_path / "out")
    assert s["inputs"] == 3 and s["clips_with_samples"] == 1
    assert set(rej["reason"]) == {"duplicate_input", "not_found"}
    assert s["all_inputs_accounted"]


def test_parquet_input(demo_corpus, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    d, paths = demo_corpus
    pq.write_table(pa.table({"path": [str(p) for p in paths[:2]]}), tmp_path / "in.parquet")
    s = build(_cfg("local"), str(tmp_path / "in.parquet"), tmp_path / "out", log_summary=False)
    assert s["inputs"] == 2 and s["clips_with_samples"] == 2


def test_resume_with_a_changed_input_list_is_refused_or_appends(local_out, demo_corpus, tmp_path):
    """Chunks are consecutive inputs: a list whose clips moved between chunks must not resume (it
    would skip or duplicate clips); a list that only appends after full chunks resumes exactly."""
    out, s0 = local_out
    d, paths = demo_corpus
    ordered = sorted(str(p) for p in paths)  # the directory listing order of the first run
    assert s0["inputs"] == 4  # 2 clips per shard: chunks [0, 1], [2, 3]
    # one clip removed: clip 2 moves into chunk 0 -> refused before any work, nothing changed on disk
    work = tmp_path / "removed"
    shutil.copytree(out, work)
    before = _digests(work)
    lst = tmp_path / "three.txt"
    lst.write_text("\n".join(ordered[1:]) + "\n")
    with pytest.raises(InputError, match="input list changed since shard pairs-000000"):
        build(_cfg("local"), str(lst), work, log_summary=False)
    assert _digests(work) == before
    # the same four clips plus one appended: both old chunks are kept, only the new clip is processed
    extra = tmp_path / "extra" / "static_99.mp4"  # outside the shared corpus dir, which other tests list
    extra.parent.mkdir()
    shutil.copy(next(p for p in ordered if "static" in p), extra)
    work = tmp_path / "appended"
    shutil.copytree(out, work)
    lst = tmp_path / "five.txt"
    lst.write_text("\n".join(ordered + [str(extra)]) + "\n")
    s = build(_cfg("local"), str(lst), work, log_summary=False)
    assert s["inputs"] == 5 and s["new_samples_this_run"] == 3 and s["samples"] == s0["samples"] + 3
    assert s["all_inputs_accounted"] and _digests(work)["pairs-000000.tar"] == _digests(out)["pairs-000000.tar"]


def test_clip_ids_do_not_depend_on_where_the_corpus_is(local_out, demo_corpus, tmp_path):
    """Clip ids (so keys, per-clip seeds, pairs and shards) hash a clip's name under its input root,
    not its absolute path: the same corpus mounted elsewhere (another machine, a CI checkout) builds
    the same samples, byte for byte apart from the source path in meta.json."""
    from vid2pair.pipeline.io import clip_identity, input_root

    out, s0 = local_out
    d, paths = demo_corpus
    moved = tmp_path / "elsewhere" / d.name
    shutil.copytree(d, moved)
    s = build(_cfg("local"), str(moved), tmp_path / "out", log_summary=False)
    assert s["samples"] == s0["samples"] == 9
    assert list(read_index(tmp_path / "out")["key"]) == list(read_index(out)["key"])
    a, b = _all_members(out), _all_members(tmp_path / "out")
    assert a.keys() == b.keys() and len(a) > 9 * 5
    for name in a:  # every member byte for byte, meta.json apart from the source path it records
        if name.endswith("meta.json"):
            ma, mb = json.loads(a[name]), json.loads(b[name])
            assert ma.pop("source") != mb.pop("source") and ma == mb, name
        else:
            assert a[name] == b[name], name
    # the identity of each kind of input
    clip = str(moved / "static_00.mp4")
    assert clip_identity(clip, input_root(str(moved))) == f"{d.name}/static_00.mp4"
    assert clip_identity(clip, input_root(str(moved / "*.mp4"))) == f"{d.name}/static_00.mp4"
    assert input_root(str(tmp_path / "elsewhere" / "*" / "*.mp4")) == str(tmp_path / "elsewhere")
    lst = tmp_path / "list.txt"  # a list names its clips relative to its own folder
    assert clip_identity(clip, input_root(str(lst))) == f"{tmp_path.name}/elsewhere/{d.name}/static_00.mp4"
    assert clip_identity("/data/x.mp4", input_root(str(lst))) == "/data/x.mp4"  # outside the root: absolute
    assert clip_identity("s3://b/v/x.mp4", input_root("s3://b/v/")) == "s3://b/v/x.mp4"


def test_accounting_is_exact(local_out):
    """all_inputs_accounted compares sets of sources, so an input missing from the output is caught
    even when other rows would make the counts add up."""
    from vid2pair.pipeline.io import make_tasks, summarize

    out, s0 = local_out
    sources = sorted(set(read_index(out)["source"]) | set(read_rejects(out)["source"]))
    cfg = _cfg("local")
    tasks, _ = make_tasks(sources, cfg.output.clips_per_shard)
    assert summarize(out, cfg, len(sources), 1.0, "local", 0, tasks=tasks, n_duplicates=0)["all_inputs_accounted"]
    ghost, _ = make_tasks(sources + ["/nowhere/ghost.mp4"], cfg.output.clips_per_shard)
    s = summarize(out, cfg, len(sources) + 1, 1.0, "local", 0, tasks=ghost, n_duplicates=0)
    assert not s["all_inputs_accounted"] and s["unaccounted_inputs"] == ["/nowhere/ghost.mp4"]
    assert not summarize(out, cfg, len(sources), 1.0, "local", 0, tasks=tasks, n_duplicates=1)["all_inputs_accounted"]


def test_ray_model_stage_actors_get_only_what_they_read_and_give_identical_shards(demo_corpus, tmp_path, ray_local):
    """A stage holding a model (here collage depth from a tiny random DPT saved as a local weights
    directory, loaded like the published one) runs in a pool of actors that the clip tasks call with
    only the arrays the stage reads: src, tgt, flow and its fb mask, not the frames in between or any other
    signal, and it sends back only what it made. The shards equal the local runner's."""
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation, DPTImageProcessor

    from vid2pair.pipeline.plan import fused_prefix, model_stages, pair_classes
    from vid2pair.stages.collage import CollageStage

    torch.manual_seed(0)
    dpt = DPTForDepthEstimation(
        DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=64,
            patch_size=16,
            neck_hidden_sizes=[16, 32, 64, 128],
            fusion_hidden_size=32,
            backbone_out_indices=[0, 1, 2, 3],
        )
    )
    weights = tmp_path / "tiny-dpt"
    dpt.save_pretrained(weights)
    DPTImageProcessor(size={"height": 64, "width": 64}).save_pretrained(weights)
    more = ["collage.depth=dpt", f"collage.dpt_weights={weights}", "collage.device=cpu", "track.enabled=false"]
    cfg = _cfg("ray", *more)
    classes = pair_classes(cfg)
    assert [S.name for S in fused_prefix(cfg, classes)] == ["flow", "motion", "sketch", "coarse"]  # DIS on CPU
    assert [S.name for S, _ in model_stages(cfg, classes)] == ["collage"] and CollageStage.resources(cfg).num_gpus == 0
    a = build(_cfg("local", *more), str(demo_corpus[0]), tmp_path / "local", log_summary=False)
    b = build(_cfg("ray", *more), str(demo_corpus[0]), tmp_path / "ray", log_summary=False)
    assert a["samples"] == b["samples"] == 9
    assert _digests(tmp_path / "ray") == _digests(tmp_path / "local")
    meta = json.loads(next(iter(_members(tmp_path / "ray", "meta.json"))))
    assert meta["collage"]["depth"]["backend"] == "dpt"
    # what the actors received: per pair two 240x320 RGB frames, a float32 flow field and its fb mask,
    # nothing else
    io = b["model_io"]["collage"]
    assert io["arrays"] == ["flow", "flow_valid", "src", "tgt"] and io["pairs"] >= 9
    per_pair = (2 * 240 * 320 * 3 + 240 * 320 * 2 * 4 + 240 * 320) / 2**20
    assert io["mib_in"] == pytest.approx(io["pairs"] * per_pair, rel=1e-3)
    # back: the collage (3 bytes a pixel), its hole mask and region masks (1 each) and which piece
    # each pixel shows (int16, for the quality stage), not the frames or the flow it was sent
    assert io["mib_out"] == pytest.approx(io["pairs"] * 240 * 320 * 7 / 2**20, rel=1e-3)
    assert "model_io" not in a


def _members(out, suffix):
    import tarfile

    for tar in sorted(Path(out, "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                if m.name.endswith(suffix):
                    yield tf.extractfile(m).read()


def test_index_parts_keep_every_rows_columns():
    """A chunk whose first sample lacks a score (its coarse edit was dropped, say) keeps the other
    samples' column of it, and a chunk with no sample has every column too: each part is written
    with the schema the config declares."""
    from vid2pair.pipeline.io import _table, index_schema

    schema = index_schema(load_config("demo"))
    t = _table([{"key": "a", "q_changed_frac": 0.1}, {"key": "b", "q_coarse_gain_db": 7.5}], schema)
    assert t.schema == schema and t.column("q_coarse_gain_db").to_pylist() == [None, 7.5]
    assert _table([], schema).schema == schema


def test_quality_scores_reach_meta_json_and_the_index(local_out):
    """Every written sample's quality scores are in its meta.json and, as q_* columns, in the index,
    with the same values: users re-filter without rebuilding."""
    out, _ = local_out
    idx = read_index(out).set_index("key")
    qcols = [c for c in idx.columns if c.startswith("q_")]
    assert {"q_changed_frac", "q_fb_consistent", "q_unexplained_frac", "q_coarse_gain_db"} <= set(qcols), qcols
    metas = {k[: -len(".meta.json")]: json.loads(v) for k, v in _all_members(out).items() if k.endswith(".meta.json")}
    assert set(metas) == set(idx.index)
    for key, meta in metas.items():
        q = meta["quality"]
        assert 0.01 <= q["changed_frac"] <= 0.4  # what the pair rules let through
        for c in qcols:
            v = q.get(c[2:])
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                assert idx.at[key, c] == pytest.approx(v), (key, c)


def test_reject_previews_are_capped_and_spread_over_the_reasons(tmp_path):
    """output.reject_previews=12: at most 12 previews, at most 12 // 6 = 2 per (stage, reason),
    first come first kept, so a flood of one reason cannot crowd out the others."""
    from vid2pair.core.items import ClipDone, ClipTask, Reject
    from vid2pair.pipeline.io import OutputWriter, read_rejects

    cfg = _cfg("local", "output.reject_previews=12")
    task = ClipTask(source="/v/a.mp4", clip_idx=0, chunk=0, clip_id="a-0123456789")
    w = OutputWriter(tmp_path, cfg, [task])
    reasons = (
        [("motion", "motion_too_small")] * 20
        + [("quality", "unmatched_change")] * 3
        + [("quality", "no_visible_change")] * 1
        + [("track", "untrackable")] * 2
    )
    for k, (stage, reason) in enumerate(reasons):
        w.add(
            Reject(
                source=task.source,
                clip_id=task.clip_id,
                chunk=0,
                clip_idx=0,
                stage=stage,
                reason=reason,
                level="pair",
                key=f"a-0123456789_s000_f{k:06d}_f{k + 20:06d}",
                preview=b"\xff\xd8jpeg",
            )
        )
    assert w.add(ClipDone(source=task.source, clip_id=task.clip_id, chunk=0, clip_idx=0, n_items=len(reasons))) == [0]
    rej = read_rejects(tmp_path)
    kept = rej[rej["preview"] != ""]
    assert len(rej) == 26 and kept.groupby("reason").size().to_dict() == {
        "motion_too_small": 2,
        "unmatched_change": 2,
        "no_visible_change": 1,
        "untrackable": 2,
    }
    assert all((tmp_path / p).read_bytes() == b"\xff\xd8jpeg" for p in kept["preview"])
    assert (
        sorted(kept[kept.reason == "motion_too_small"]["key"])
        == sorted(rej[rej.reason == "motion_too_small"]["key"])[:2]
    )
