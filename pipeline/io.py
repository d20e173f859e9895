"""Inputs and outputs: listing clips, writing shards / index / rejects / summary, resume.

Output layout (docs/format.md)::

    <out>/shards/pairs-NNNNNN.tar      WebDataset shard of chunk NNNNNN (its clips' samples)
    <out>/index/part-NNNNNN.parquet    one row per written sample
    <out>/rejects/part-NNNNNN.parquet  one row per rejected clip, shot or pair
    <out>/rejects/inputs.parquet       duplicate inputs
    <out>/_done/NNNNNN.json            commit marker of a chunk (written last)
    <out>/run.json                     the config fingerprint the output was built with
    <out>/summary.json                 counts per stage and reason, timings, config, versions

A chunk is ``output.clips_per_shard`` consecutive inputs (sorted, de-duplicated input list), so
the assignment of clips to shards is stable. A chunk is written when all of its clips are done:
tar to a temporary name then renamed, then the index and rejects parts, then the marker. A rerun
skips chunks that have a marker, so resuming is exactly-once at chunk granularity.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import math
import os
import platform
import tarfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Iterable, Optional

from vid2pair.core.items import ClipDone, ClipTask, Item, PairItem, Reject, clip_id_for
from vid2pair.pipeline.storage import Store, is_uri, list_remote


class InputError(ValueError):
    pass


# ---------------------------------------------------------------- inputs


def list_inputs(spec: str, extensions: Iterable[str]) -> list[str]:
    """A directory (recursive), a glob, a .txt list (one path per line, # comments) or a .parquet
    (column ``path``, ``video``, ``source`` or the first string column). Order: sorted for dirs and
    globs, file order for lists."""
    if is_uri(spec):
        return list_remote(spec, extensions)
    exts = {e.lower() for e in extensions}
    p = Path(spec)
    if p.is_dir():
        return sorted(str(f) for f in p.rglob("*") if f.is_file() and f.suffix.lower() in exts)
    if p.suffix == ".txt" and p.is_file():
        base = p.parent
        out = []
        for line in p.read_text().splitlines():
            s = line.strip()
            if s and not s.startswith("#"):
                out.append(s if os.path.isabs(s) or "://" in s else str(base / s))
        return out
    if p.suffix == ".parquet" and p.is_file():
        import pyarrow.parquet as pq

        t = pq.read_table(p)
        for col in ("path", "video", "source"):
            if col in t.column_names:
                return [str(v) for v in t.column(col).to_pylist()]
        import pyarrow as pa

        for f in t.schema:
            if pa.types.is_string(f.type) or pa.types.is_large_string(f.type):
                return [str(v) for v in t.column(f.name).to_pylist()]
        raise InputError(f"{spec}: no path column (expected 'path', 'video' or 'source')")
    if any(ch in spec for ch in "*?["):
        return sorted(f for f in glob.glob(spec, recursive=True) if Path(f).suffix.lower() in exts)
    if p.is_file():
        return [str(p)]
    raise InputError(f"--input {spec!r}: not a directory, glob, .txt list, .parquet or video file")


def require_inputs(spec: str, sources: list[str], extensions: Iterable[str]) -> None:
    """An input that matches nothing is almost always a typo: an error, not an empty dataset."""
    if sources:
        return
    s = str(spec)
    if s.endswith((".txt", ".parquet")):
        raise InputError(f"--input {spec}: the list is empty (no paths in it)")
    raise InputError(
        f"no video files found in {spec} (extensions: {' '.join(sorted(extensions))}; "
        f"set input.extensions to pick up others)"
    )


def input_root(spec: str) -> Optional[str]:
    """The folder an input's clips are named under: the directory itself, a glob's fixed leading
    folder, a list file's folder. ``None`` for object-store URIs (their URIs do not move)."""
    s = str(spec)
    if is_uri(s):
        return None
    if glob.has_magic(s):
        parts = Path(s).parts
        fixed = list(itertools.takewhile(lambda p: not glob.has_magic(p), parts))
        return os.path.abspath(os.path.join(*fixed)) if fixed else os.getcwd()
    p = Path(s)
    return os.path.abspath(p if p.is_dir() else p.parent)


def clip_identity(source: str, root: Optional[str]) -> str:
    """What a clip id hashes: ``<root folder name>/<path under the root>`` for a clip under its input
    root, so that ids (and the keys and per-clip seeds derived from them) do not depend on where the
    corpus is mounted (another machine, a CI checkout, a tmp dir); the absolute path or the URI
    otherwise."""
    if "://" in source or root is None:
        return source
    src = os.path.abspath(source)
    rel = os.path.relpath(src, root)
    if rel == os.curdir or rel.startswith(os.pardir):
        return src
    return f"{Path(root).name}/{Path(rel).as_posix()}"


def _normalized(source: str) -> str:
    """The form inputs are de-duplicated and processed by: a URI (any scheme) as given, a path made
    absolute."""
    return source if "://" in source else os.path.abspath(source)


def units_of(duration_s: Optional[float], unit_s: float) -> int:
    """How many work units a clip of ``duration_s`` seconds becomes: spans of about ``unit_s``
    (``round(duration / unit_s)``, so a clip up to 1.5 units long stays whole); 1 when the
    duration is unknown or ``unit_s`` is 0."""
    if not unit_s or not duration_s or duration_s <= 0:
        return 1
    return max(1, int(math.floor(duration_s / unit_s + 0.5)))


def clip_durations(sources: list[str], unit_s: float, threads: int = 8) -> dict[str, float]:
    """The container duration (seconds, from the header: nothing is decoded) of each local clip, for
    splitting long clips into work units; object-store URIs and files that cannot be probed are
    left out (they stay one unit; the clip stage reports what is wrong with them)."""
    if not unit_s:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    from vid2pair.stages.probe import probe

    def one(src: str) -> Optional[float]:
        try:
            info, bad = probe(src)
        except Exception:  # a hostile file must not stop the listing
            return None
        return None if bad else info.duration_s

    local = [s for s in sources if "://" not in s]
    with ThreadPoolExecutor(max(1, threads)) as ex:
        got = dict(zip(local, ex.map(one, local)))
    return {s: d for s, d in got.items() if d}


def make_tasks(
    sources: list[str],
    clips_per_shard: int,
    root: Optional[str] = None,
    durations: Optional[dict[str, float]] = None,
    unit_s: float = 0.0,
) -> tuple[list[ClipTask], list[tuple[str, str]]]:
    """De-duplicate (by absolute path) and assign stable clip ids and chunks. ``root``: the input
    root (:func:`input_root`) the ids are taken relative to; without it they hash the absolute path.

    A clip whose duration (``durations``, by source as listed) is 1.5 ``unit_s`` or more is
    split into :func:`units_of` equal spans, each a work unit with a chunk of its own (so a failure
    costs one unit and a rerun resumes per unit); whole clips share chunks ``clips_per_shard`` at
    a time, in input order. Returns (tasks, duplicates as (source, first occurrence))."""
    durations = durations or {}
    seen: dict[str, str] = {}
    uniq, dups = [], []
    for s in sources:
        norm = _normalized(s)
        if norm in seen:
            dups.append((s, seen[norm]))
            continue
        seen[norm] = s
        uniq.append((norm, units_of(durations.get(s), unit_s), durations.get(s)))
    tasks: list[ClipTask] = []
    chunk, in_chunk = 0, 0  # the chunk being filled with whole clips, and how many it holds
    for src, n, dur in uniq:
        cid = clip_id_for(src, clip_identity(src, root))
        if n == 1:
            if in_chunk == clips_per_shard:
                chunk, in_chunk = chunk + 1, 0
            tasks.append(ClipTask(source=src, clip_idx=len(tasks), chunk=chunk, clip_id=cid))
            in_chunk += 1
            continue
        if in_chunk:
            chunk, in_chunk = chunk + 1, 0
        for u in range(n):
            tasks.append(
                ClipTask(
                    source=src,
                    clip_idx=len(tasks),
                    chunk=chunk,
                    clip_id=cid,
                    unit=u,
                    units=n,
                    start_s=u * dur / n,
                    end_s=(u + 1) * dur / n if u < n - 1 else 0.0,
                )
            )
            chunk += 1
    return tasks, dups


# ---------------------------------------------------------------- writing

INDEX_SCALARS = (
    "clip_id",
    "source",
    "shot",
    "src_frame",
    "tgt_frame",
    "src_time",
    "tgt_time",
    "dt",
    "fps",
    "reversed",
    "static_score",
    "seed",
    "policy",
)
#: the index columns every sample has, before those the stages declare (``Stage.index_schema``)
INDEX_BASE = {
    "key": "string",
    "shard": "string",
    "clip_id": "string",
    "source": "string",
    "shot": "int64",
    "src_frame": "int64",
    "tgt_frame": "int64",
    "src_time": "float64",
    "tgt_time": "float64",
    "dt": "float64",
    "fps": "float64",
    "reversed": "bool",
    "static_score": "float64",
    "seed": "int64",
    "policy": "string",
    "width": "int64",
    "height": "int64",
    "orig_width": "int64",
    "orig_height": "int64",
    "flow_backend": "string",
}
_ARROW = {"string": "string", "int64": "int64", "float64": "float64", "bool": "bool_"}


def index_schema(cfg, stages: tuple | None = None):
    """The pyarrow schema of every ``index/`` part of an output built with ``cfg``: the same in each
    part (an empty chunk's too), so the folder reads as one table with pandas, pyarrow, Ray Data or
    DuckDB."""
    import pyarrow as pa

    from vid2pair.pipeline.plan import index_types

    types = {**INDEX_BASE, **(index_types(cfg) if stages is None else index_types(cfg, stages))}
    return pa.schema([(k, getattr(pa, _ARROW[t])()) for k, t in types.items()])


def reject_schema():
    import pyarrow as pa

    return pa.schema([(k, pa.string()) for k in REJECT_COLUMNS])


def index_row(key: str, shard: str, meta: dict, stages: tuple | None = None) -> dict:
    """The clip-level scalars of a sample, then the columns each stage (of ``stages``, default the
    pipeline's) declares for it."""
    from vid2pair.pipeline.plan import index_columns

    row = {"key": key, "shard": shard}
    row.update({k: meta.get(k) for k in INDEX_SCALARS})
    row["width"], row["height"] = meta["size"]
    row["orig_width"], row["orig_height"] = meta["orig_size"]
    row["flow_backend"] = (meta.get("flow") or {}).get("backend")
    row.update(index_columns(meta) if stages is None else index_columns(meta, stages))
    return row


REJECT_COLUMNS = ("source", "clip_id", "level", "key", "stage", "reason", "detail", "preview")
PREVIEW_DIR = "previews"  # beside rejects/, not in it: rejects/ reads as one parquet dataset


def _table(rows: list[dict], schema):
    """``rows`` as a table of exactly ``schema`` (missing values null; a column no declaration names is
    left out, and logged once: a stage's ``index_schema`` misses it)."""
    import pyarrow as pa

    extra = sorted({k for r in rows for k in r} - set(schema.names))
    if extra and not _table.warned:
        import logging

        logging.getLogger("vid2pair").warning("index columns without a declared type left out: %s", ", ".join(extra))
        _table.warned = True
    return pa.Table.from_pylist(rows, schema=schema)


_table.warned = False


class ShardWriter:
    """A WebDataset shard: an uncompressed tar stream, a sample's members ``<key>.<suffix>`` in
    sorted order, mtime 0, mode 0444 and a fixed owner, so shards are reproducible byte for byte.
    The same layout as ``webdataset.TarWriter(mtime=0, encoder=False)`` writes, without importing
    webdataset, whose package import pulls in torch (about 600 MB in the driver)."""

    def __init__(self, fileobj):
        self._tar = tarfile.open(fileobj=fileobj, mode="w|")

    def write(self, key: str, files: dict) -> None:
        for suffix in sorted(files):
            data = files[suffix]
            ti = tarfile.TarInfo(f"{key}.{suffix}")
            ti.size, ti.mtime, ti.mode = len(data), 0.0, 0o444  # a float, as webdataset sets it (a PAX mtime record)
            ti.uname = ti.gname = "bigdata"
            self._tar.addfile(ti, io.BytesIO(data))

    def close(self) -> None:
        self._tar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


STAGING = "_staging"


def _pack_members(files: dict) -> bytes:
    """A sample's tar members as one blob: a JSON line of (name, size), then the bytes."""
    names = sorted(files)
    return json.dumps([[k, len(files[k])] for k in names]).encode() + b"\n" + b"".join(files[k] for k in names)


def _unpack_members(blob: bytes) -> dict:
    head, _, body = blob.partition(b"\n")
    out, pos = {}, 0
    for k, n in json.loads(head):
        out[k] = body[pos : pos + n]
        pos += n
    return out


def stage_sample(root: str, it: Item) -> Item:
    """Worker side, after a sample's last stage: write its tar members to ``<out>/_staging/<chunk>/``
    (temp + rename; a retried task rewrites the same bytes) and keep only their path in the item, so
    what travels to the driver is a small record."""
    if isinstance(it, PairItem) and it.files:
        rel = f"{STAGING}/{it.chunk:06d}/{it.key}.bin"
        Store(root).write_bytes(rel, _pack_members(it.files))
        it.files = {}
        it.meta["_staged"] = rel
    return it


def write_chunk(
    root: str, chunk: int, members: list, index_rows: list[dict], reject_rows: list[dict], schema=None
) -> int:
    """Write chunk ``chunk``'s shard, then its index and rejects parts; returns the samples written.
    ``members``: (key, where) sorted by key, ``where`` the path of the members a worker staged
    (:func:`stage_sample`) or a function giving them. With staged members it drops the chunk's
    staging folder. Runs where the runner puts it (a Ray task with the ``workers`` shard writers,
    staged members only); the caller writes the commit marker afterwards."""
    store = Store(root)
    name = f"pairs-{chunk:06d}.tar"
    if members:  # the tar appears under its final name only once complete
        with store.atomic_file(f"shards/{name}") as f:
            with ShardWriter(f) as w:
                for key, where in members:
                    w.write(key, _unpack_members(store.read_bytes(where)) if isinstance(where, str) else where())
    if schema is None:  # (a caller without a config: the columns the rows have, strings where all are null)
        import pyarrow as pa

        schema = pa.Table.from_pylist(index_rows).schema if index_rows else pa.schema([("key", pa.string())])
    store.write_parquet(f"index/part-{chunk:06d}.parquet", _table(index_rows, schema))
    store.write_parquet(f"rejects/part-{chunk:06d}.parquet", _table(reject_rows, reject_schema()))
    if any(isinstance(where, str) for _, where in members):
        store.delete_dir(f"{STAGING}/{chunk:06d}")
    return len(members)


class OutputWriter:
    """Collects items from any runner and commits complete chunks atomically. ``chunk_writer``: how a
    chunk whose samples were staged by the workers (:func:`stage_sample`) is written (default:
    :func:`write_chunk` in this process; the Ray runner sets a Ray task)."""

    def __init__(self, out_dir: str | Path, cfg, tasks: list[ClipTask], duplicates=(), stages: tuple | None = None):
        self.store = Store(out_dir)
        self.root = self.store.uri if self.store.remote else self.store.base  # absolute: workers have another cwd
        self.chunk_writer = write_chunk
        self.cfg = cfg
        self.stages = stages
        self.schema = index_schema(cfg, stages)
        for d in ("shards", "index", "rejects", "_done", PREVIEW_DIR):
            self.store.makedirs(d)
        self._check_run_identity()
        self.tasks_by_chunk: dict[int, list[ClipTask]] = defaultdict(list)
        for t in tasks:
            self.tasks_by_chunk[t.chunk].append(t)
        self.done_chunks = {int(n.split(".")[0]) for n in self.store.list("_done", ".json")}
        self.store.delete_dir(STAGING)  # members staged for chunks that never committed: rebuilt now
        self._staged_any = False
        self._check_done_chunks(tasks)
        self.pending_tasks = [t for t in tasks if t.chunk not in self.done_chunks]
        self._items: dict[int, list[Item]] = defaultdict(list)
        # encoded samples wait for their chunk's commit in a local spool directory, not in memory
        # (a long clip's samples would otherwise all be held by the driver)
        self._spool: Optional[Path] = None
        self._spooled: dict[int, Path] = {}  # id(sample) -> its spooled files (the sample waits in _items)
        self._n_spooled = 0
        self._expected: dict[int, int] = {}  # clip_idx -> items the clip emitted (from its ClipDone)
        self._arrived: Counter = Counter()  # clip_idx -> items arrived
        self._clips_finished: Counter = Counter()  # chunk -> clips complete
        self._decode_info: dict[int, dict] = {}  # clip_idx -> what decoding met (ClipDone.info["decode"])
        self._footage: dict[int, dict] = {}  # clip_idx -> its frames' hashes (ClipDone.info["footage"])
        self.written_chunks: list[int] = []
        self.new_samples = 0
        # previews of rejected pairs: at most output.reject_previews, at most a sixth of them per
        # (stage, reason), first come first kept in commit order (chunks commit in input order, and a
        # resumed run counts the previews already committed, so the choice is reproducible)
        self._preview_cap = int(cfg.output.reject_previews)
        self._preview_counts: Counter = Counter()
        for name in self.store.list(PREVIEW_DIR, ".jpg"):
            stage, reason = name.split("__")[:2]
            self._preview_counts[(stage, reason)] += 1
        ids = {t.source: t.clip_id for t in tasks}  # a duplicate is the same clip as its first occurrence
        rows = [
            {
                "source": s,
                "clip_id": ids.get(_normalized(first), clip_id_for(s)),
                "level": "clip",
                "key": "",
                "stage": "input",
                "reason": "duplicate_input",
                "detail": f"same file as {first}",
                "preview": "",
            }
            for s, first in duplicates
        ]
        self.store.write_parquet("rejects/inputs.parquet", _table(rows, reject_schema()))

    def _check_run_identity(self) -> None:
        fp = self.cfg.fingerprint()
        old: dict = {}
        if self.store.exists("run.json"):
            old = json.loads(self.store.read_bytes("run.json"))
            if old.get("fingerprint") != fp:
                if not self.cfg.output.overwrite:
                    raise InputError(
                        f"{self.store.uri} was built with a different config (fingerprint {old.get('fingerprint')} "
                        f"!= {fp}); use a new --output, or --set output.overwrite=true to discard it"
                    )
                for d in ("shards", "index", "rejects", "_done", PREVIEW_DIR):
                    self.store.delete_dir(d)
                    self.store.makedirs(d)
        self._old_inputs = old.get("inputs") if old.get("fingerprint") == fp else None
        self._run_identity = {"fingerprint": fp, "config": self.cfg.to_dict()}

    def _check_done_chunks(self, tasks: list[ClipTask]) -> None:
        """Resume is exactly-once only if every finished chunk holds the clips the current input
        list assigns to it. The same list (the usual rerun) is recognised by its hash; otherwise
        every marker is compared, so appending to a .txt list resumes, while inserting, removing
        or reordering inputs (which moves clips between chunks) is refused before any work."""
        import hashlib

        digest = hashlib.sha1("\n".join(t.label for t in tasks).encode()).hexdigest()
        inputs = {"n": len(tasks), "sha1": digest}
        if self.done_chunks and self._old_inputs != inputs:
            for c in sorted(self.done_chunks):
                marker = json.loads(self.store.read_bytes(f"_done/{c:06d}.json"))
                now = [t.label for t in self.tasks_by_chunk.get(c, [])]
                if marker.get("clips") != now:
                    was = marker.get("clips") or []
                    raise InputError(
                        f"{self.store.uri}: the input list changed since shard pairs-{c:06d} was written: it holds "
                        f"{len(was)} clip(s) starting {was[:1]}, the current inputs put {len(now)} clip(s) starting "
                        f"{now[:1]} there. Resume needs the same input list; use a new --output, or "
                        f"--set output.overwrite=true to rebuild"
                    )
        self.store.write_bytes("run.json", json.dumps({**self._run_identity, "inputs": inputs}, indent=1).encode())

    def add(self, it: Item) -> list[int]:
        """Take one item; returns the chunks committed as a result (usually none)."""
        c = it.chunk
        if isinstance(it, ClipDone):
            self._expected[it.clip_idx] = it.n_items
            if it.info.get("decode"):
                self._decode_info[it.clip_idx] = it.info["decode"]
            if it.info.get("footage"):
                self._footage[it.clip_idx] = it.info["footage"]
        else:
            if isinstance(it, PairItem) and it.files:
                self._spool_files(it)
            self._staged_any = self._staged_any or (isinstance(it, PairItem) and "_staged" in it.meta)
            self._items[c].append(it)
            self._arrived[it.clip_idx] += 1
        if it.clip_idx in self._expected and self._arrived[it.clip_idx] >= self._expected[it.clip_idx]:
            del self._expected[it.clip_idx]
            self._clips_finished[c] += 1
            if self._clips_finished[c] == len(self.tasks_by_chunk[c]):
                self._commit(c)
                return [c]
        return []

    def _spool_files(self, it: PairItem) -> None:
        """Move a sample's tar members to a local spool file (:func:`_pack_members`)."""
        import tempfile

        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="vid2pair-spool-"))
        self._n_spooled += 1
        path = self._spool / f"{self._n_spooled:09d}.bin"
        path.write_bytes(_pack_members(it.files))
        self._spooled[id(it)] = path
        it.files = {}

    def _files(self, s: PairItem) -> dict:
        if "_staged" in s.meta:
            return _unpack_members(self.store.read_bytes(s.meta["_staged"]))
        path = self._spooled.pop(id(s), None)
        if path is None:
            return s.files
        files = _unpack_members(path.read_bytes())
        path.unlink()
        return files

    def close(self) -> None:
        """Remove the spool directory and the staging area (what they still hold belongs to chunks
        that did not commit: a rerun rebuilds those)."""
        if self._staged_any:
            self.store.delete_dir(STAGING)
        if self._spool is not None:
            import shutil

            shutil.rmtree(self._spool, ignore_errors=True)
            self._spool, self._spooled = None, {}

    def _commit(self, chunk: int) -> None:
        items = self._items.pop(chunk, [])
        samples = sorted((i for i in items if isinstance(i, PairItem)), key=lambda i: i.key)
        rejects = [i for i in items if isinstance(i, Reject)]
        for s in samples:  # a signal a stage dropped from a written sample: a signal-level row
            rejects += [
                Reject(
                    source=s.source,
                    clip_id=s.clip_id,
                    chunk=s.chunk,
                    clip_idx=s.clip_idx,
                    key=s.key,
                    level="signal",
                    stage=r["stage"],
                    reason=r["reason"],
                    detail=r["detail"],
                )
                for r in s.meta.get("signal_rejects", ())
            ]
        rejects.sort(key=lambda r: (r.clip_idx, r.key, r.stage, r.reason))
        previews = {id(r): self._keep_preview(r) for r in rejects}
        name = f"pairs-{chunk:06d}.tar"
        index_rows = [index_row(s.key, name, s.meta, self.stages) for s in samples]
        reject_rows = [
            {**{k: getattr(r, k) for k in REJECT_COLUMNS if k != "preview"}, "preview": previews[id(r)]}
            for r in rejects
        ]
        members = [(s.key, s.meta["_staged"] if "_staged" in s.meta else (lambda s=s: self._files(s))) for s in samples]
        staged = bool(members) and all(isinstance(w, str) for _, w in members)  # the workers wrote the members
        (self.chunk_writer if staged else write_chunk)(self.root, chunk, members, index_rows, reject_rows, self.schema)
        decode = {
            t.label: self._decode_info.pop(t.clip_idx)
            for t in self.tasks_by_chunk[chunk]
            if t.clip_idx in self._decode_info
        }
        footage = {
            t.label: self._footage.pop(t.clip_idx) for t in self.tasks_by_chunk[chunk] if t.clip_idx in self._footage
        }
        self.store.write_bytes(
            f"_done/{chunk:06d}.json",
            json.dumps(  # the commit marker, last
                {
                    "chunk": chunk,
                    "samples": len(samples),
                    "rejects": len(rejects),
                    "clips": [t.label for t in self.tasks_by_chunk[chunk]],
                    "decode": decode,
                    "footage": footage,
                }
            ).encode(),
        )
        self.written_chunks.append(chunk)
        self.new_samples += len(samples)

    def _keep_preview(self, r: Reject) -> str:
        """Write ``r``'s preview if the budget allows; its path relative to the output, or ``""``."""
        if not r.preview or self._preview_cap <= 0:
            return ""
        per_reason = max(1, self._preview_cap // 6)
        kind = (r.stage, r.reason)
        if sum(self._preview_counts.values()) >= self._preview_cap or self._preview_counts[kind] >= per_reason:
            return ""
        self._preview_counts[kind] += 1
        rel = f"{PREVIEW_DIR}/{r.stage}__{r.reason}__{r.key or r.clip_id}.jpg"
        self.store.write_bytes(rel, r.preview)
        return rel

    def incomplete_chunks(self) -> list[int]:
        return sorted(set(t.chunk for t in self.pending_tasks) - set(self.written_chunks))


# ---------------------------------------------------------------- reading back / summary


def read_index(out_dir: str | Path):
    import pandas as pd

    df = Store(out_dir).read_parquet_dir("index", "part-")
    return df if df is not None else pd.DataFrame(columns=["key", "shard"])


def read_rejects(out_dir: str | Path):
    import pandas as pd

    df = Store(out_dir).read_parquet_dir("rejects")
    return df if df is not None else pd.DataFrame(columns=list(REJECT_COLUMNS))


def package_versions() -> dict:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for n in (
        "vid2pair",
        "numpy",
        "opencv-python",
        "av",
        "torch",
        "torchvision",
        "ray",
        "webdataset",
        "pyarrow",
        "scenedetect",
        "kornia",
        "timm",
    ):
        try:
            out[n] = metadata.version(n)
        except metadata.PackageNotFoundError:
            pass
    return out


def summarize(
    out_dir: str | Path,
    cfg,
    n_inputs: int,
    wall_s: float,
    runner: str,
    new_samples: int,
    tasks: Iterable[ClipTask] | None = None,
    n_duplicates: int | None = None,
    model_io: dict | None = None,
) -> dict:
    """Counts from what is on disk (so a resumed run's summary covers the whole output).

    With ``tasks`` (the de-duplicated inputs) and ``n_duplicates``, ``all_inputs_accounted`` is exact:
    every task's clip is in the index or the rejects, nothing else is, and every duplicate is recorded.
    ``model_io``: what the Ray runner's model-stage actors received this run (stage -> figures)."""
    idx, rej = read_index(out_dir), read_rejects(out_dir)
    written_clips = set(idx["source"]) if len(idx) else set()
    rejected_sources = set(rej["source"]) if len(rej) else set()
    by_stage: dict = defaultdict(dict)
    for (stage, reason), n in rej.groupby(["stage", "reason"]).size().items() if len(rej) else []:
        by_stage[stage][reason] = int(n)
    by_level = rej.groupby("level").size().to_dict() if len(rej) else {}
    clip_level = set(rej[rej["level"] == "clip"]["source"]) if len(rej) else set()
    summary = {
        "inputs": n_inputs,
        "samples": int(len(idx)),
        "shards": int(idx["shard"].nunique()) if len(idx) else 0,
        "clips_with_samples": len(written_clips),
        "clips_rejected": len(clip_level - written_clips),
        "clips_without_samples": len((rejected_sources - written_clips) - clip_level),
        "rejects_total": int(len(rej)),
        "rejects_by_level": {k: int(v) for k, v in by_level.items()},
        "rejects_by_stage": dict(by_stage),
        "runner": runner,
        "wall_s": round(wall_s, 3),
        "new_samples_this_run": new_samples,
        "pairs_per_s": round(new_samples / wall_s, 3) if wall_s > 0 else None,
        "config_fingerprint": cfg.fingerprint(),
        "config": cfg.to_dict(),
        "versions": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    n_dup_rejects = by_stage.get("input", {}).get("duplicate_input", 0)
    if tasks is not None:
        tasks = list(tasks)
        summary["work_units"] = len(tasks)
        summary["split_clips"] = len({t.source for t in tasks if t.split})
        on_disk = written_clips | (set(rej[rej["stage"] != "input"]["source"]) if len(rej) else set())
        missing = {t.source for t in tasks} - on_disk
        summary["all_inputs_accounted"] = (
            not missing
            and len(on_disk) == len({t.source for t in tasks})
            and (n_duplicates is None or n_dup_rejects == n_duplicates)
        )
        if missing:
            summary["unaccounted_inputs"] = sorted(missing)[:20]
    else:
        accounted = summary["clips_with_samples"] + summary["clips_rejected"] + summary["clips_without_samples"]
        summary["all_inputs_accounted"] = accounted + n_dup_rejects >= n_inputs
    if model_io:
        summary["model_io"] = model_io
    summary["decode"] = decode_summary(out_dir)
    summary["duplicate_footage"] = duplicate_footage(out_dir)
    Store(out_dir).write_bytes("summary.json", json.dumps(summary, indent=1, default=str).encode())
    return summary


def decode_summary(out_dir: str | Path, top: int = 50) -> dict:
    """What decoding met over the whole output, from the chunks' commit markers: FFmpeg's error
    lines (counted, never printed) and the frames that had to be read again to be exact, in all and
    for each clip (work unit) that had any (the ``top`` worst)."""
    store = Store(out_dir)
    per: dict = {}
    for name in store.list("_done", ".json"):
        per.update(json.loads(store.read_bytes(f"_done/{name}")).get("decode") or {})
    bad = {
        k: {f: v.get(f, 0) for f in ("errors", "rereads")}
        | ({"last_error": v["last_error"]} if v.get("last_error") else {})
        for k, v in per.items()
        if v.get("errors") or v.get("rereads")
    }
    worst = sorted(bad, key=lambda k: (-bad[k]["errors"], -bad[k]["rereads"], k))[:top]
    return {
        "clips": len(per),
        "ffmpeg_errors": sum(v.get("errors", 0) for v in per.values()),
        "clips_with_errors": sum(1 for v in per.values() if v.get("errors")),
        "frames_reread": sum(v.get("rereads", 0) for v in per.values()),
        "frames_decoded": sum(v.get("decoded", 0) for v in per.values()),
        "by_clip": {k: bad[k] for k in worst},
    }


def duplicate_footage(
    out_dir: str | Path,
    max_bits: int = 6,
    min_frames: int = 8,
    min_share: float = 0.5,
    sample: int = 256,
    max_ties: int = 8,
) -> list[dict]:
    """Clips that repeat another clip's footage (a re-encode, a trimmed copy), from the frames' hashes
    in the chunks' commit markers (``decode.Video.footage``): up to ``sample`` frames of each clip
    are looked up among every other clip's frames (64-bit dhashes at most ``max_bits`` apart, found
    through 16-bit bands); a clip is a duplicate of another when at least ``min_share`` of its
    looked-up frames (and ``min_frames``) match that clip's frames at one time offset (within a
    frame). Frames that match more than ``max_ties`` frames of a clip (a still scene) are no
    evidence either way, so clips of one fixed camera at other times are not duplicates. Each
    duplicate is reported once, the later clip in input order as the copy."""
    store = Store(out_dir)
    clips: dict[str, list] = {}  # source -> [(frame, hash)], in input order
    for name in store.list("_done", ".json"):
        for label, f in (json.loads(store.read_bytes(f"_done/{name}")).get("footage") or {}).items():
            src = label.split("#unit ")[0]
            hs, k0, st = f.get("hashes", ""), int(f.get("first", 0)), int(f.get("stride", 1))
            clips.setdefault(src, []).extend(
                (k0 + i * st, int(hs[16 * i : 16 * i + 16], 16)) for i in range(len(hs) // 16)
            )
    names = list(clips)
    bands: dict = defaultdict(list)
    for ci, src in enumerate(names):
        for fr, h in clips[src]:
            if h:
                for b in range(4):
                    bands[(b, (h >> (16 * b)) & 0xFFFF)].append((ci, fr, h))
    found: dict = {}
    for ci, src in enumerate(names):
        frames = [(fr, h) for fr, h in clips[src] if h]
        if len(frames) < min_frames:
            continue
        step = max(1, len(frames) // sample)
        looked = frames[::step][:sample]
        votes: dict = defaultdict(list)  # other clip -> per looked-up frame, the offsets it matches at
        for fr, h in looked:
            best: dict = {}
            for b in range(4):
                for cj, fr2, h2 in bands.get((b, (h >> (16 * b)) & 0xFFFF), ()):
                    if cj == ci:
                        continue
                    d = bin(h ^ h2).count("1")
                    if d <= max_bits:
                        best.setdefault(cj, {})[fr2] = d
            for cj, cands in best.items():
                dmin = min(cands.values())
                ties = [f2 for f2, d in cands.items() if d == dmin]
                if len(ties) <= max_ties:
                    votes[cj].append({f2 - fr for f2 in ties})
        for cj, per_frame in votes.items():
            o = Counter(x for offs in per_frame for x in offs).most_common(1)[0][0]
            n = sum(1 for offs in per_frame if offs & {o - 1, o, o + 1})
            if n >= min_frames and n >= min_share * len(looked):
                a, b = sorted((ci, cj))
                if (a, b) not in found:
                    found[(a, b)] = {
                        "clip": names[b],
                        "duplicate_of": names[a],
                        "offset_frames": o if b == ci else -o,
                        "frames_matched": int(n),
                        "frames_looked_up": len(looked),
                    }
    return [found[k] for k in sorted(found)]


def format_summary(s: dict, out_dir) -> str:
    lines = [
        f"output: {out_dir}",
        f"  inputs {s['inputs']}: {s['clips_with_samples']} clips with samples, {s['clips_rejected']} clips "
        f"rejected, {s['clips_without_samples']} clips with every shot/pair rejected"
        + (f" ({s['split_clips']} long clip(s) split: {s['work_units']} work units)" if s.get("split_clips") else ""),
        f"  samples {s['samples']} in {s['shards']} shard(s); {s['new_samples_this_run']} new this run; "
        f"wall {s['wall_s']:.1f} s ({s['pairs_per_s']} pairs/s, runner {s['runner']})",
        f"  rejects {s['rejects_total']} ({', '.join(f'{k}: {v}' for k, v in s['rejects_by_level'].items())})",
    ]
    for stage, reasons in sorted(s["rejects_by_stage"].items()):
        lines.append(f"    {stage:>14}: " + ", ".join(f"{r} {n}" for r, n in sorted(reasons.items())))
    for dup in s.get("duplicate_footage") or ():
        lines.append(
            f"  duplicate footage: {Path(dup['clip']).name} repeats {Path(dup['duplicate_of']).name} "
            f"({dup['frames_matched']} of {dup['frames_looked_up']} frames looked up match)"
        )
    d = s.get("decode") or {}
    if d.get("ffmpeg_errors") or d.get("frames_reread"):
        lines.append(
            f"  decoding: {d['ffmpeg_errors']} FFmpeg error line(s) in {d['clips_with_errors']} clip(s), "
            f"{d['frames_reread']} read(s) redone to get the true frames (summary.json: decode)"
        )
    for stage, m in s.get("model_io", {}).items():
        lines.append(
            f"  model stage {stage}: {m['pairs']} pairs in {m['calls']} calls to {m['actors']} actor(s); "
            f"received {m['mib_in']:.1f} MiB ({', '.join(m['arrays'])}), sent back {m['mib_out']:.1f} MiB"
        )
    return "\n".join(lines)
