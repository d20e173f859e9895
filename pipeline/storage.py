"""Local directories and object stores (``s3://``, ``gs://``) behind one small interface.

Object stores go through ``pyarrow.fs`` (credentials and endpoints from the usual environment:
``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_ENDPOINT_URL``/``AWS_DEFAULT_REGION`` for S3 and
S3-compatible servers, ``GOOGLE_APPLICATION_CREDENTIALS`` for GCS).

Atomicity: on a local disk a file is written under a temporary name and renamed; in an object store
an object becomes visible only when its upload completes, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import tempfile
from pathlib import Path


def is_uri(s: str) -> bool:
    return "://" in str(s) and not str(s).startswith("file://")


def filesystem(uri: str):
    import pyarrow.fs as pafs

    return pafs.FileSystem.from_uri(uri)


class Store:
    """A directory (local path or ``s3://bucket/prefix`` / ``gs://...``) with atomic writes."""

    def __init__(self, root: str | os.PathLike):
        import pyarrow.fs as pafs

        root = str(root)
        self.uri = root.rstrip("/")
        self.remote = is_uri(root)
        if self.remote:
            self.fs, base = filesystem(root)
            self.base = base.rstrip("/")
        else:
            self.fs = pafs.LocalFileSystem()
            self.base = os.path.abspath(root)

    def __repr__(self) -> str:
        return f"Store({self.uri!r})"

    def path(self, rel: str) -> str:
        return f"{self.base}/{rel}" if rel else self.base

    def local_path(self, rel: str) -> Path:
        assert not self.remote
        return Path(self.path(rel))

    def makedirs(self, rel: str = "") -> None:
        if not self.remote:
            os.makedirs(self.path(rel), exist_ok=True)

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(rel)).type != pafs.FileType.NotFound

    def list(self, rel_dir: str, suffix: str = "") -> list[str]:
        """File names (not paths) directly inside ``rel_dir`` ending with ``suffix``, sorted."""
        import pyarrow.fs as pafs

        sel = pafs.FileSelector(self.path(rel_dir), allow_not_found=True, recursive=False)
        return sorted(
            Path(i.path).name
            for i in self.fs.get_file_info(sel)
            if i.type == pafs.FileType.File and i.path.endswith(suffix)
        )

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def open_input_file(self, rel: str):
        return self.fs.open_input_file(self.path(rel))

    def write_bytes(self, rel: str, data: bytes) -> None:
        if self.remote:
            with self.fs.open_output_stream(self.path(rel)) as f:
                f.write(data)
            return
        final = Path(self.path(rel))
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = final.with_name(final.name + ".tmp")
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)

    @contextlib.contextmanager
    def atomic_file(self, rel: str):
        """Yields a local binary file to write; it appears at ``rel`` only when the block succeeds."""
        if self.remote:
            d = tempfile.mkdtemp(prefix="vid2pair-")
            tmp = Path(d) / Path(rel).name
        else:
            final = Path(self.path(rel))
            final.parent.mkdir(parents=True, exist_ok=True)
            tmp = final.with_name(final.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            if self.remote:
                import pyarrow.fs as pafs

                pafs.copy_files(str(tmp), self.path(rel), destination_filesystem=self.fs)
            else:
                os.replace(tmp, final)
        finally:
            if self.remote:
                shutil.rmtree(tmp.parent, ignore_errors=True)
            elif tmp.exists():
                tmp.unlink()

    def delete_dir(self, rel: str) -> None:
        if self.remote:
            with contextlib.suppress(OSError):  # the folder's marker object too, not only what is in it
                self.fs.delete_dir(self.path(rel))
        else:
            shutil.rmtree(self.path(rel), ignore_errors=True)

    def read_parquet_dir(self, rel_dir: str, prefix: str = ""):
        """All parquet files directly in ``rel_dir`` (optionally starting with ``prefix``) as one DataFrame."""
        import pandas as pd
        import pyarrow.parquet as pq

        frames = []
        for name in self.list(rel_dir, ".parquet"):
            if name.startswith(prefix):
                t = pq.read_table(io.BytesIO(self.read_bytes(f"{rel_dir}/{name}")))
                if t.num_rows:
                    frames.append(t.to_pandas())
        return pd.concat(frames, ignore_index=True) if frames else None

    def write_parquet(self, rel: str, table) -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(rel, buf.getvalue())


class OutputError(OSError):
    """The output location cannot be written; the message names it and why."""


def check_writable(root: str | os.PathLike) -> None:
    """Raise :class:`OutputError` unless ``root`` is (or can become) a directory we can write to:
    a local path that is not a file and whose nearest existing parent is writable, or an object
    store prefix where a probe object can be written and deleted (a missing or denied bucket)."""
    root = str(root)
    if not is_uri(root):
        p = Path(root).expanduser().resolve()
        if p.exists() and not p.is_dir():
            raise OutputError(f"--output {root}: exists and is not a directory")
        q = p
        while not q.exists():
            q = q.parent
        if not q.is_dir():
            raise OutputError(f"--output {root}: {q} is a file, not a directory")
        if not os.access(q, os.W_OK | os.X_OK):
            raise OutputError(f"--output {root}: cannot write there (permission denied on {q})")
        try:
            os.makedirs(p, exist_ok=True)
            fd, probe = tempfile.mkstemp(prefix=".vid2pair-write-test-", dir=p)
            os.close(fd)
            os.remove(probe)
        except OSError as e:
            raise OutputError(f"--output {root}: cannot write there ({e.strerror or e})") from None
        return
    try:
        store = Store(root)
        name = f".vid2pair-write-test-{os.getpid()}"
        store.write_bytes(name, b"")
        store.fs.delete_file(store.path(name))
    except Exception as e:  # pyarrow raises OSError / ArrowException subclasses with the store's reason
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OutputError(f"--output {root}: cannot write there ({msg})") from None


@contextlib.contextmanager
def local_copy(source: str):
    """A local path for ``source``: itself when local, else a temporary download (removed after)."""
    if not is_uri(source):
        yield source
        return
    import pyarrow.fs as pafs

    fs, path = filesystem(source)
    d = tempfile.mkdtemp(prefix="vid2pair-in-")
    try:
        local = os.path.join(d, "clip" + (Path(path).suffix or ".mp4"))
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"no such object: {source}")
        pafs.copy_files(path, local, source_filesystem=fs)
        yield local
    finally:
        shutil.rmtree(d, ignore_errors=True)


def list_remote(spec: str, extensions) -> list[str]:
    """Inputs from an object store: a prefix (recursive), a glob, a .txt list or a .parquet."""
    import fnmatch

    import pyarrow.fs as pafs

    scheme = spec.split("://", 1)[0]
    fs, path = filesystem(spec)
    exts = {e.lower() for e in extensions}
    if path.endswith(".txt"):
        with fs.open_input_stream(path) as f:
            return [ln.strip() for ln in f.read().decode().splitlines() if ln.strip() and not ln.startswith("#")]
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        with fs.open_input_file(path) as f:
            t = pq.read_table(f)
        col = next((c for c in ("path", "video", "source") if c in t.column_names), None)
        if col is None:
            raise ValueError(f"{spec}: no path column (expected 'path', 'video' or 'source')")
        return [str(v) for v in t.column(col).to_pylist()]
    pattern = None
    if any(ch in path for ch in "*?["):
        pattern = path
        path = path[: min(path.index(ch) for ch in "*?[" if ch in path)].rsplit("/", 1)[0]
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.File:
        return [spec]
    files = fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True))
    out = [
        f"{scheme}://{i.path}"
        for i in files
        if i.type == pafs.FileType.File
        and Path(i.path).suffix.lower() in exts
        and (pattern is None or fnmatch.fnmatch(i.path, pattern))
    ]
    return sorted(out)
