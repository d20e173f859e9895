"""Long clips become several work units (``input.unit_s``): each span of about ``unit_s`` seconds is
its own task and its own shard, so Ray can spread one long video over a cluster, a failure costs
one unit, and a rerun resumes per unit. The clip is still accounted for as a whole. (The
multi-node kill test of a long clip is in tests/test_cluster.py.)"""

import json
import tarfile

import pytest

from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import OutputWriter, make_tasks, read_index, read_rejects, summarize, units_of
from vid2pair.pipeline.runners import build, run_local
from vid2pair.pipeline.synthetic import write_shots_video

FPS = 12.0
SPAN = 120  # frames per unit: 10 s at 12 fps


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory):
    """40 s: ten 4-s shots with one moving object each, hard cuts between."""
    d = tmp_path_factory.mktemp("long")
    write_shots_video(d / "long.mp4", 10, 320, 240, 4.0, FPS)
    return d


def _cfg(*extra):
    return load_config("demo", ["runner.name=local", "runner.progress=false", "input.unit_s=10", *extra])


def test_units_of_a_clip():
    assert [units_of(d, 10) for d in (5, 14.9, 15, 40, 44.9)] == [1, 1, 2, 4, 4]
    assert units_of(None, 10) == 1 and units_of(3600, 0) == 1 and units_of(0.0, 10) == 1


def test_long_clips_get_spans_and_chunks_of_their_own():
    srcs = ["/v/a.mp4", "/v/b.mp4", "/v/c.mp4", "/v/d.mp4", "/v/e.mp4"]
    durs = {"/v/a.mp4": 5.0, "/v/b.mp4": 40.0, "/v/c.mp4": 5.0, "/v/d.mp4": 5.0, "/v/e.mp4": 5.0}
    tasks, dups = make_tasks(srcs, 2, "/v", durs, 10.0)
    assert not dups
    assert [(t.source[-5:], t.chunk, t.unit, t.units) for t in tasks] == [
        ("a.mp4", 0, 0, 1),
        ("b.mp4", 1, 0, 4),
        ("b.mp4", 2, 1, 4),
        ("b.mp4", 3, 2, 4),
        ("b.mp4", 4, 3, 4),
        ("c.mp4", 5, 0, 1),
        ("d.mp4", 5, 0, 1),
        ("e.mp4", 6, 0, 1),
    ]
    assert [t.clip_idx for t in tasks] == list(range(8))
    b = [t for t in tasks if t.split]
    assert len({t.clip_id for t in b}) == 1
    assert [t.start_s for t in b] == [0.0, 10.0, 20.0, 30.0] and [t.end_s for t in b] == [10.0, 20.0, 30.0, 0.0]
    assert [t.label for t in b][2] == "/v/b.mp4#unit 3/4"
    # without durations (or with unit_s 0) nothing is split: the chunks of before
    plain, _ = make_tasks(srcs, 2, "/v")
    assert [t.chunk for t in plain] == [0, 0, 1, 1, 2] and not any(t.split for t in plain)
    assert [t.chunk for t in make_tasks(srcs, 2, "/v", durs, 0.0)[0]] == [0, 0, 1, 1, 2]


def _tars(out):
    return {p.name: p.read_bytes() for p in sorted((out / "shards").glob("*.tar"))}


def test_a_long_clip_is_built_unit_by_unit_and_resumed_per_unit(long_clip, tmp_path):
    out = tmp_path / "out"
    s = build(_cfg(), str(long_clip), out, log_summary=False)
    assert (s["work_units"], s["split_clips"], s["inputs"], s["shards"]) == (4, 1, 1, 4)
    assert s["all_inputs_accounted"] and s["clips_with_samples"] == 1
    idx = read_index(out)
    assert len(idx) == len(set(idx["key"])) >= 4 * 4  # at least 4 of each unit's 9 candidates (measured: 36)
    for _, r in idx.iterrows():  # every sample lies in its unit's span and shard, shot numbers per unit
        u = int(r["shard"][-10:-4])
        assert u * SPAN <= min(r["src_frame"], r["tgt_frame"]) and max(r["src_frame"], r["tgt_frame"]) < (u + 1) * SPAN
        assert r["shot"] // 10000 == u, r["key"]
    assert sorted(idx["shard"].unique()) == [f"pairs-{u:06d}.tar" for u in range(4)]
    marker = json.loads((out / "_done" / "000002.json").read_text())
    assert marker["clips"] == [f"{long_clip / 'long.mp4'}#unit 3/4"]
    before = _tars(out)
    with tarfile.open(out / "shards" / "pairs-000001.tar") as tf:
        metas = [json.load(tf.extractfile(m)) for m in tf.getmembers() if m.name.endswith("meta.json")]
    assert metas and all(m["unit"] == [1, 4] and m["unit_frames"] == [SPAN, 2 * SPAN] for m in metas)
    n2 = int((idx["shard"] == "pairs-000002.tar").sum())

    # a lost unit: only it is rebuilt, and it comes out the same, byte for byte
    (out / "_done" / "000002.json").unlink()
    (out / "shards" / "pairs-000002.tar").unlink()
    s2 = build(_cfg(), str(long_clip), out, log_summary=False)
    assert s2["new_samples_this_run"] == n2 > 0
    assert _tars(out) == before
    assert s2["samples"] == s["samples"] and s2["all_inputs_accounted"]


def test_a_header_longer_than_the_video_costs_only_the_units_past_its_end(long_clip, tmp_path):
    """The container says 80 s, the stream holds 40 s: the four units past the end are unit-level
    rejects (too_few_frames, naming the span); the clip counts once, with its samples."""
    cfg = _cfg()
    src = str(long_clip / "long.mp4")
    tasks, dups = make_tasks([src], cfg.output.clips_per_shard, str(long_clip), {src: 80.0}, 10.0)
    assert len(tasks) == 8
    w = OutputWriter(tmp_path, cfg, tasks, dups)
    run_local(cfg, tasks, w)
    w.close()
    s = summarize(tmp_path, cfg, 1, 1.0, "local", w.new_samples, tasks=tasks, n_duplicates=0)
    rej = read_rejects(tmp_path)
    past = rej[rej["level"] == "unit"]
    assert sorted(past["key"]) == [f"{tasks[0].clip_id}_u{u:03d}" for u in range(4, 8)]
    assert set(past["stage"] + "/" + past["reason"]) == {"decode/too_few_frames"}
    for key, detail in zip(past["key"], past["detail"]):
        assert f"decoded 0 of frames {int(key[-3:]) * SPAN}-" in detail, detail
    assert not (rej["level"] == "clip").any()
    assert s["clips_with_samples"] == 1 and s["clips_rejected"] == 0 and s["all_inputs_accounted"]
    assert set(read_index(tmp_path)["shard"]) == {f"pairs-{u:06d}.tar" for u in range(4)}
