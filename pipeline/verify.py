"""``vid2pair verify``: check an output directory's shards against its index.

Checks: every committed chunk has its index/rejects parts; every index key is in its shard exactly
once and every shard key is in the index; every sample has its src, tgt and meta members; every
member is readable (images decode, JSON parses,
.npy loads without pickle); no leftover temporary files from an interrupted run (reported, harmless:
they are never read as shards and are overwritten on resume).
"""

from __future__ import annotations

import io
import json
import tarfile
from collections import Counter

import numpy as np

REQUIRED_MEMBERS = ("src", "tgt", "meta")  # every sample (docs/format.md); the signal members are optional


def _check_member(name: str, data: bytes) -> str | None:
    ext = name.rsplit(".", 1)[-1].lower()
    try:
        if ext in ("jpg", "jpeg", "png", "webp"):
            import cv2

            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            if img is None or img.size == 0:
                return "image does not decode"
        elif ext == "json":
            json.loads(data)
        elif ext == "npy":
            np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:
        return f"{type(e).__name__}: {e}"
    return None


def _check_shard(out, shard: str, want: Counter, deep: bool, problems: list[str]) -> int:
    """One shard against the index (``want``: its keys and their counts there): safe, unique member
    names, one meta.json per indexed key, the required members (decoded when ``deep``). Adds what is
    wrong to ``problems``; returns the number of members read."""
    got: Counter = Counter()
    members_of: dict[str, set] = {}
    n_members = 0
    try:
        with out.open_input_file(f"shards/{shard}") as fobj, tarfile.open(fileobj=fobj) as tf:
            seen_members = set()
            for m in tf:
                if not m.isfile():
                    continue
                if "/" in m.name or m.name.startswith(".."):
                    problems.append(f"shards/{shard}: unsafe member name {m.name!r}")
                key, _, suffix = m.name.partition(".")
                if suffix == "meta.json":
                    got[key] += 1
                members_of.setdefault(key, set()).add(suffix.split(".")[0])
                if m.name in seen_members:
                    problems.append(f"shards/{shard}: duplicate member {m.name}")
                seen_members.add(m.name)
                n_members += 1
                if deep:
                    err = _check_member(m.name, tf.extractfile(m).read())
                    if err:
                        problems.append(f"shards/{shard}:{m.name}: unreadable ({err})")
    except (tarfile.TarError, OSError, EOFError) as e:
        problems.append(f"shards/{shard}: not a readable tar ({e})")
        return n_members
    for k in sorted(set(want) | set(got)):
        if want[k] != 1 or got[k] != 1:
            problems.append(f"shards/{shard}: key {k} is {want[k]}x in the index, {got[k]}x in the tar")
    for k, have in sorted(members_of.items()):
        lost = [m for m in REQUIRED_MEMBERS if m not in have]
        if lost:
            problems.append(f"shards/{shard}: sample {k} has no {', '.join(lost)} member")
    return n_members


def verify_output(out_dir, deep: bool = True) -> tuple[bool, str]:
    from vid2pair.pipeline.io import read_index
    from vid2pair.pipeline.storage import Store

    out = Store(out_dir)
    problems: list[str] = []
    notes: list[str] = []
    if not out.exists("run.json") and not out.list("index", ".parquet"):
        return False, f"{out.uri}: not a vid2pair output directory (no run.json or index/)"
    done = {n.split(".")[0] for n in out.list("_done", ".json")}
    for c in sorted(done):
        for part in (f"index/part-{c}.parquet", f"rejects/part-{c}.parquet"):
            if not out.exists(part):
                problems.append(f"chunk {c}: committed but {part} is missing")
    idx = read_index(out_dir)
    dup = idx["key"][idx["key"].duplicated()].tolist() if len(idx) else []
    if dup:
        problems.append(f"{len(dup)} key(s) appear more than once in the index, e.g. {dup[:3]}")
    tmp = [f"{d}/{n}" for d in ("shards", "index", "rejects", "_done") for n in out.list(d, ".tmp")]
    if tmp:
        notes.append(f"{len(tmp)} leftover temporary file(s) from an interrupted run (ignored): {tmp[:3]}")
    n_members = 0
    shards = sorted(set(idx["shard"])) if len(idx) else []
    on_disk = set(out.list("shards", ".tar"))
    for extra in sorted(on_disk - set(shards)):
        problems.append(f"shards/{extra}: not referenced by the index")
    for shard in shards:
        want = Counter(idx.loc[idx["shard"] == shard, "key"])
        if shard not in on_disk:
            problems.append(f"shards/{shard}: missing ({sum(want.values())} indexed samples)")
            continue
        n_members += _check_shard(out, shard, want, deep, problems)
    ok = not problems
    lines = [
        f"verify {out.uri}: {'OK' if ok else 'PROBLEMS FOUND'}",
        f"  {len(idx)} indexed samples, {len(shards)} shards, {n_members} members checked"
        f"{' (decoded)' if deep else ''}, {len(done)} committed chunks",
    ]
    lines += [f"  ! {p}" for p in problems[:50]]
    if len(problems) > 50:
        lines.append(f"  ! ... and {len(problems) - 50} more")
    lines += [f"  note: {n}" for n in notes]
    return ok, "\n".join(lines)
