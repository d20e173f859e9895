"""`vid2pair verify` finds each kind of damage to an output directory (and passes a good one)."""

import io
import shutil
import tarfile
from pathlib import Path

import pytest

from vid2pair.pipeline.cli import main
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.verify import verify_output


@pytest.fixture(scope="module")
def good(demo_corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("verify_good")
    cfg = load_config(
        "demo", ["runner.name=local", "runner.progress=false", "track.enabled=false", "collage.enabled=false"]
    )
    s = build(cfg, str(demo_corpus[0]), out, log_summary=False)
    assert s["samples"] == 9
    return out


def _rewrite_tar(path: Path, edit):
    """Rewrite a shard with ``edit(list of (TarInfo, bytes)) -> list``."""
    with tarfile.open(path) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
    members = edit(members)
    with tarfile.open(path, "w") as tf:
        for m, data in members:
            m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def _damaged(good, tmp_path, damage):
    out = tmp_path / "out"
    shutil.copytree(good, out)
    shard = out / "shards" / sorted(read_index(out)["shard"])[0]
    damage(out, shard)
    return verify_output(out)


def test_good_output_verifies(good, capsys):
    ok, report = verify_output(good)
    assert ok, report
    assert "9 indexed samples" in report
    assert main(["verify", str(good)]) == 0


def _drop_tgt(out, shard):
    def edit(ms):
        first = next(m.name for m, _ in ms if m.name.endswith(".tgt.jpg"))
        return [(m, d) for m, d in ms if m.name != first]

    _rewrite_tar(shard, edit)


def _duplicate_sample(out, shard):
    def edit(ms):
        key = ms[0][0].name.split(".")[0]
        return ms + [(m, d) for m, d in ms if m.name.startswith(key + ".")]

    _rewrite_tar(shard, edit)


def _corrupt_jpeg(out, shard):
    def edit(ms):
        first = next(m.name for m, _ in ms if m.name.endswith(".src.jpg"))
        return [(m, b"\xff\xd8 not a jpeg" if m.name == first else d) for m, d in ms]

    _rewrite_tar(shard, edit)


def _truncate(out, shard):
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])


def _drop_index_row(out, shard):
    import pyarrow.parquet as pq

    part = sorted((out / "index").glob("part-*.parquet"))[0]
    t = pq.read_table(part)
    pq.write_table(t.slice(1), part)


def _delete_shard(out, shard):
    shard.unlink()


def _lose_rejects_part(out, shard):
    sorted((out / "rejects").glob("part-*.parquet"))[0].unlink()


@pytest.mark.parametrize(
    "damage, expect",
    [
        (_drop_tgt, "has no tgt member"),
        (_duplicate_sample, "1x in the index, 2x in the tar"),
        (_corrupt_jpeg, "unreadable (image does not decode)"),
        (_truncate, "shards/pairs-000000.tar: not a readable tar"),
        (_drop_index_row, "0x in the index, 1x in the tar"),
        (_delete_shard, "missing (3 indexed samples)"),
        (_lose_rejects_part, "committed but rejects/part-000000.parquet is missing"),
    ],
    ids=lambda v: v.__name__ if callable(v) else "",
)
def test_damage_is_reported(good, tmp_path, damage, expect):
    ok, report = _damaged(good, tmp_path, damage)
    assert not ok and "PROBLEMS FOUND" in report
    assert expect in report, report
    assert main(["verify", str(tmp_path / "out")]) == 1
