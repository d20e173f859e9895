"""Ctrl-C / SIGTERM during a build: it stops within seconds, says how to resume, exits 130 / 143,
leaves no process of ours behind, and the rerun equals a straight run."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vid2pair.pipeline.synthetic import make_clip, write_video


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    for k in range(4):
        write_video(
            make_clip(width=160, height=120, n_frames=30, fps=12, seed=30 + k).frames,
            d / f"c{k}.mp4",
            12,
            codec="mpeg4",
        )
    return d


def _cmd(clips, out, runner):
    return [
        sys.executable,
        "-m",
        "vid2pair.pipeline.cli",
        "build",
        "--config",
        "demo",
        "--input",
        str(clips),
        "--output",
        str(out),
        "--runner",
        runner,
        "--no-progress",
        "--set",
        "output.clips_per_shard=1",
        "--set",
        "frame.size=[120, 160]",
        "--set",
        "runner.num_cpus=2",
    ]


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                ppid = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(p.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        st = (Path("/proc") / str(pid) / "stat").read_text()
    except OSError:
        return False
    return st.rsplit(")", 1)[1].split()[0] != "Z"


def _digests(out: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((out / "shards").glob("*.tar"))}


@pytest.mark.parametrize(
    "runner,sig", [("local", signal.SIGINT), ("local", signal.SIGTERM), ("ray", signal.SIGINT), ("ray", signal.SIGTERM)]
)
def test_interrupt_stops_fast_and_resumes_to_the_same_output(clips, tmp_path, runner, sig):
    straight = tmp_path / "straight"
    subprocess.run(_cmd(clips, straight, "local"), check=True, capture_output=True, timeout=600)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    p = subprocess.Popen(_cmd(clips, out, runner), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while not (out / "_done" / "000000.json").exists():
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "no chunk committed in time"
        time.sleep(0.2)
    ours = _descendants(p.pid)
    assert ours, "the build should have child processes by now (isolation child / Ray)"
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    took = time.monotonic() - t0
    assert p.returncode == 128 + int(sig), err[-2000:]
    assert took < 15, took
    assert "interrupted:" in err and "chunks committed; rerun the same command to resume" in err
    time.sleep(2)
    left = [c for c in ours if _alive(c)]
    assert not left, [Path(f"/proc/{c}/cmdline").read_bytes()[:200] for c in left]
    r = subprocess.run(_cmd(clips, out, runner), capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert _digests(out) == _digests(straight) and _digests(out)
