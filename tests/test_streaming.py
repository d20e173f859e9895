"""A clip is processed pair by pair: memory holds one pair's frames, not the clip's.

* the clip stage decodes a pair only when its consumer asks for it;
* the isolation child streams each result to the parent as it is ready, and its time limit is
  on the wait for the next result (a long clip that keeps producing is not killed, a hang is);
* the writer keeps encoded samples in a spool directory until their chunk commits;
* the shards are byte-identical to processing the clip in one piece.
(`benchmarks/memory.py` measures the peak RSS against clip length.)
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from vid2pair.core.items import ClipDone, PairItem, Reject
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import make_tasks
from vid2pair.pipeline.isolation import IsolatedCall
from vid2pair.pipeline.plan import frames_to_decode, fused_prefix, pair_classes
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.synthetic import make_clip, write_video
from vid2pair.pipeline.unit import ClipUnit
from vid2pair.stages.clip import ClipStage

CFG = [
    "runner.name=local",
    "runner.progress=false",
    "quality.enabled=false",
    "frame.size=[120, 160]",
    "pairs.per_shot=4",
]


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("stream")
    return write_video(
        make_clip(width=160, height=120, n_frames=48, fps=12, seed=21).frames, d / "c.mp4", 12, codec="mpeg4"
    )


class CountingClip(ClipStage):
    decoded: list = []

    def _pair_item(self, *a, **k):
        CountingClip.decoded.append(time.monotonic())
        return super()._pair_item(*a, **k)


def test_pairs_are_decoded_only_when_asked_for(clip):
    cfg = load_config("demo", CFG)
    (task,), _ = make_tasks([str(clip)], 1)
    CountingClip.decoded = []
    gen = CountingClip(cfg, frames=frames_to_decode(cfg)).iter_items(task)
    first = next(i for i in gen if isinstance(i, PairItem))
    assert len(CountingClip.decoded) == 1 and first.arrays["frames"].shape[1:] == (120, 160, 3)
    rest = [i for i in gen if isinstance(i, PairItem)]
    assert len(CountingClip.decoded) == 1 + len(rest) == 4


@pytest.mark.parametrize("mode", ["none", "process"])
def test_unit_streams_each_pair_through_the_fused_stages(clip, mode):
    """The first encoded sample leaves the unit before the clip's other pairs are decoded."""
    cfg = load_config("demo", CFG + [f"isolation.mode={mode}"])
    (task,), _ = make_tasks([str(clip)], 1)
    unit = ClipUnit(cfg, fused_prefix(cfg, pair_classes(cfg)))
    try:
        items = []
        for it in unit.iter(task):
            items.append((it, time.monotonic()))
        pairs = [(i, t) for i, t in items if isinstance(i, (PairItem, Reject))]
        assert len(pairs) == 4 and isinstance(items[-1][0], ClipDone) and items[-1][0].n_items == 4
        assert all(isinstance(i, Reject) or (i.files and not i.arrays) for i, _ in pairs)  # encoded in the unit
        # they arrive one by one: the first well before the last (each pair costs ~0.1 s or more)
        assert pairs[-1][1] - pairs[0][1] > 0.1
    finally:
        unit.close()


def _emitter(n: int, pause: float, hang_after: int = -1):
    def work(task, report):
        for k in range(n):
            if k == hang_after:
                time.sleep(3600)
            time.sleep(pause)
            report.emit(k)
        return ["done"]

    return work


def test_isolation_limit_is_per_result():
    # 6 results 0.5 s apart under a 1.5 s limit: 3 s in all, not a timeout
    iso = IsolatedCall(_emitter, (6, 0.5), timeout_s=1.5)
    try:
        got = list(iso.stream("t"))
        assert [p for k, p, _ in got if k == "item"] == list(range(6)) and got[-1][:2] == ("ok", ["done"])
        assert iso.call("t") == ("ok", [0, 1, 2, 3, 4, 5, "done"], "")
    finally:
        iso.close()
    # a hang after two results: those two arrive, then the timeout
    iso = IsolatedCall(_emitter, (6, 0.1, 2), timeout_s=1.0)
    try:
        got = list(iso.stream("t"))
        assert [p for k, p, _ in got if k == "item"] == [0, 1] and got[-1][0] == "timeout"
        assert list(iso.stream("t"))[-1][0] == "timeout"  # the next task gets a fresh child
    finally:
        iso.close()


def _digest(d: Path) -> str:
    h = hashlib.sha256()
    for p in sorted((d / "shards").glob("*.tar")):
        h.update(p.read_bytes())
    return h.hexdigest()


def test_spooled_writer_gives_the_same_shards(clip, tmp_path, monkeypatch):
    """Samples wait on disk for their commit; the shards equal those of holding them in memory."""
    from vid2pair.pipeline import io

    cfg = load_config("demo", CFG)
    spool, spooled = io.OutputWriter._spool_files, []

    def counting(self, it):
        spool(self, it)
        spooled.append((self._spool, it.files))

    monkeypatch.setattr(io.OutputWriter, "_spool_files", counting)
    s = build(cfg, str(clip), tmp_path / "spooled", log_summary=False)
    assert len(spooled) == s["samples"] >= 3 and all(files == {} for _, files in spooled)
    assert not spooled[0][0].exists()  # the spool directory is gone after the build
    monkeypatch.setattr(io.OutputWriter, "_spool_files", lambda self, it: None)  # keep them in memory
    build(cfg, str(clip), tmp_path / "memory", log_summary=False)
    assert len(list((tmp_path / "spooled" / "shards").glob("*.tar"))) == 1
    assert _digest(tmp_path / "spooled") == _digest(tmp_path / "memory")


def test_the_driver_stays_light(clip, tmp_path):
    """The local runner's driver only lists, commits and writes: it imports neither torch nor
    webdataset (whose package import pulls torch in: ~600 MB of RSS the driver does not need), and
    its shards are byte-identical to webdataset's TarWriter(mtime=0, encoder=False) output."""
    import subprocess
    import sys
    import tarfile

    code = (
        "import sys; from vid2pair.pipeline.config import load_config; "
        "from vid2pair.pipeline.runners import build; "
        f"s = build(load_config('demo', {CFG!r}), {str(clip)!r}, {str(tmp_path / 'out')!r}, log_summary=False); "
        "print(s['samples'], 'torch' in sys.modules, 'webdataset' in sys.modules)"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    n, torch_in, wds_in = r.stdout.split()[-3:]
    assert int(n) > 0 and torch_in == "False" and wds_in == "False", r.stdout
    import webdataset as wds

    (shard,) = sorted((tmp_path / "out" / "shards").glob("*.tar"))
    with tarfile.open(shard) as t:
        samples: dict = {}
        for m in t.getmembers():
            key, suffix = m.name.split(".", 1)
            samples.setdefault(key, {})[suffix] = t.extractfile(m).read()
    with open(tmp_path / "wds.tar", "wb") as f:
        w = wds.TarWriter(f, mtime=0.0, encoder=False)
        for key in sorted(samples):
            w.write({"__key__": key, **samples[key]})
        w.close()
    assert (tmp_path / "wds.tar").read_bytes() == shard.read_bytes()
