"""Helpers for smoke-testing the trainer (used by the tests and the benchmark).

* :func:`demo_shards` - build (once) the synthetic demo dataset and return its shard directory;
* :func:`rewrite_shard` - copy a shard, dropping members of some samples (a "missing field");
* :func:`truncate_shard` - a corrupt copy of a shard (cut mid-member).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path


def demo_shards(base: Path) -> Path:
    """``base/dataset/shards`` of the demo (synthetic clips, local runner); built if missing (~20 s)."""
    base = Path(base)
    shards = base / "dataset" / "shards"
    if shards.is_dir() and any(shards.glob("*.tar")) and (base / "dataset" / "summary.json").is_file():
        return shards
    import contextlib

    from vid2pair.pipeline.demo import run_demo

    with contextlib.redirect_stdout(io.StringIO()):
        run_demo(str(base), overrides=["runner.name=local", "runner.progress=false"])
    return shards


def rewrite_shard(src: Path, dst: Path, drop: dict[str, list[str]] | None = None) -> list[str]:
    """Copy ``src`` to ``dst`` without the members ``drop[key]`` (e.g. ``{"*": ["sketch.png"]}`` for
    every sample). Returns the keys of the copied samples."""
    drop = drop or {}
    keys: list[str] = []
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for m in tin.getmembers():
            key, member = m.name.split(".", 1)
            if key not in keys:
                keys.append(key)
            if member in drop.get(key, []) or member in drop.get("*", []):
                continue
            tout.addfile(m, tin.extractfile(m))
    return keys


def truncate_shard(src: Path, dst: Path, frac: float = 0.5) -> None:
    """Write the first ``frac`` of ``src``'s bytes to ``dst`` (a shard cut mid-member)."""
    import tarfile

    data = Path(src).read_bytes()
    n = int(len(data) * frac)
    with tarfile.open(src) as tf:  # a cut between two members reads as a shorter, intact tar: cut inside one
        spans = [(m.offset_data, m.offset_data + m.size) for m in tf.getmembers() if m.size > 1]
    if spans and not any(a < n < b for a, b in spans):
        a, b = next(((a, b) for a, b in spans if a >= n), spans[-1])
        n = (a + b) // 2
    Path(dst).write_bytes(data[:n])
