"""Fetch and verify the published model weights of :mod:`vid2pair.core.weights` (the registry).

Every model backend (optical flow now; tracker, segmenter, depth model and trainer
models later) registers its published weights here: name, source URL, size, sha256
and a short license note.  Nothing in the pipeline downloads weights at run time:
stages call :func:`resolve_weights`, which only looks on disk and raises
:class:`MissingWeightsError` with the exact ``vid2pair models fetch NAME`` command
when the file is absent.  Downloads happen only through :func:`fetch` (the
``vid2pair models fetch`` CLI): stdlib ``urllib``, streamed into ``<file>.part``,
resumable with HTTP Range, sha256/size verified, atomically renamed into place.

Cache layout (``default_cache_dir()``)::

    <cache>/raft_large_C_T_SKHT_V2-ff5fadd5.pth     single-file entry
    <cache>/dpt_hybrid_midas/config.json            multi-file entry (HF repo):
    <cache>/dpt_hybrid_midas/pytorch_model.bin      resolve_weights returns the dir

Where the registry facts come from is recorded per entry in ``WeightEntry.source``.
A ``sha256`` of ``None`` means we could not establish the digest; such files are
checked by ``sha256_prefix`` (the hex torch.hub-style file names carry) and/or size,
and ``vid2pair models list`` says so in its ``check`` column.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Iterable, Mapping

from vid2pair.core.weights import (  # noqa: F401  (re-exported: the registry's public names)
    _MB,
    _STATUS_RANK,
    REGISTRY,
    STATUS_MISSING,
    STATUS_OK,
    STATUS_SHA,
    STATUS_SIZE,
    STATUS_UNVERIFIED,
    MissingWeightsError,
    WeightEntry,
    _cache,
    _part,
    _registry,
    _Target,
    _targets,
    default_cache_dir,
    entry_path,
    get_entry,
    register,
    resolve_weights,
)

try:  # POSIX advisory locks so parallel fetches of one file don't interleave
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

_USER_AGENT = "vid2pair-models/0.1 (+urllib)"
# hosts that receive an HF token (gated repos); never forwarded to the CDN a redirect points at
_AUTH_HOSTS: tuple[str, ...] = ("huggingface.co",)
_HASH_BLOCK = 4 << 20

# --------------------------------------------------------------------------- errors


class DownloadError(RuntimeError):
    """A download failed (HTTP error, connection trouble after all retries, disk space)."""


class ChecksumError(DownloadError):
    """A completed download did not match the recorded size / sha256."""


class _Retryable(Exception):
    pass


# --------------------------------------------------------------------------- hashing


def _hash_file(path: Path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(_HASH_BLOCK), b""):
            h.update(block)
    return h


def _check(path: Path, size: int | None, sha256: str | None, prefix: str | None) -> str:
    if not path.is_file():
        return STATUS_MISSING
    if size is not None and path.stat().st_size != size:
        return STATUS_SIZE
    if sha256 or prefix:
        got = _hash_file(path).hexdigest()
        if sha256:
            return STATUS_OK if got == sha256.lower() else STATUS_SHA
        return STATUS_OK if got.startswith(prefix.lower()) else STATUS_SHA
    return STATUS_UNVERIFIED  # size matched (where known); no digest to compare


def _worst(statuses: Iterable[str]) -> str:
    return min(statuses, key=lambda s: _STATUS_RANK[s], default=STATUS_OK)


def verify(
    names: list[str] | None = None, cache_dir=None, *, registry: Mapping[str, WeightEntry] | None = None
) -> list[tuple[str, str]]:
    """(name, status) per entry; status is one of "ok", "missing", "size_mismatch",
    "sha256_mismatch", "unverified (no sha256 recorded)". Multi-file entries report
    the worst status of their files. Files whose only check is a sha256 prefix are
    "ok" when the prefix matches. Hashes full files (slow for multi-GB weights)."""
    reg = _registry(registry)
    cache = _cache(cache_dir)
    out = []
    for name in names if names is not None else list(reg):
        entry = get_entry(name, reg)
        statuses = [_check(t.dest, t.size, t.sha256, t.sha256_prefix) for t in _targets(entry, cache)]
        out.append((name, _worst(statuses)))
    return out


def _presence(entry: WeightEntry, cache: Path) -> str:
    ts = _targets(entry, cache)
    have = [t.dest.is_file() for t in ts]
    if all(have):
        return "yes"
    if any(have) or any(_part(t.dest).exists() for t in ts):
        return "partial"
    return "no"


# --------------------------------------------------------------------------- download


def _token() -> str | None:
    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        tok = os.environ.get(var)
        if tok:
            return tok.strip()
    home = os.environ.get("HF_HOME")
    token_file = (Path(home) if home else Path.home() / ".cache" / "huggingface") / "token"
    try:
        tok = token_file.read_text().strip()
    except OSError:
        return None
    return tok or None


def _auth_headers(url: str) -> dict[str, str]:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    if any(host == h or host.endswith("." + h) for h in _AUTH_HOSTS):
        tok = _token()
        if tok:
            return {"Authorization": f"Bearer {tok}"}
    return {}


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follow redirects; keep Range (a normal header) but pass the auth header on only
    to the same host -- presigned CDN URLs reject (and must not see) the HF token."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None:
            old_host = urllib.parse.urlsplit(req.full_url).hostname
            new_host = urllib.parse.urlsplit(new.full_url).hostname
            if old_host == new_host:
                for k, v in req.unredirected_hdrs.items():
                    if k.lower() == "authorization":
                        new.add_unredirected_header(k, v)
        return new


_OPENER = urllib.request.build_opener(_RedirectHandler)


def _open(url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
    if offset > 0:
        req.add_header("Range", f"bytes={offset}-")
    for k, v in _auth_headers(url).items():
        req.add_unredirected_header(k, v)
    return _OPENER.open(req, timeout=timeout)


def _parse_content_range(value: str | None):
    """'bytes 10-99/100' -> (10, 99, 100); 'bytes */100' -> (None, None, 100)."""
    if not value or not value.strip().lower().startswith("bytes"):
        return None
    spec = value.strip()[5:].strip()
    rng, _, total = spec.partition("/")
    tot = int(total) if total.strip().isdigit() else None
    if rng.strip() == "*":
        return None, None, tot
    a, _, b = rng.partition("-")
    try:
        return int(a), int(b), tot
    except ValueError:
        return None


def _progress_bar(enabled: bool, total: int | None, initial: int, desc: str):
    if enabled:
        try:
            from tqdm.auto import tqdm

            return tqdm(
                total=total,
                initial=initial,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                file=sys.stderr,
                leave=True,
            )
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass

    class _Null:
        def update(self, n):
            pass

        def close(self):
            pass

    return _Null()


def _check_disk(dest: Path, need: int) -> None:
    try:
        free = shutil.disk_usage(dest.parent).free
    except OSError:
        return
    if free < need + 16 * 1024 * 1024:
        raise DownloadError(
            f"not enough disk space for {dest.name}: need {need / _MB:.0f} MB, "
            f"{free / _MB:.0f} MB free in {dest.parent}"
        )


def _download(t: _Target, *, progress: bool, retries: int, timeout: float, backoff: float, chunk_size: int) -> None:
    """Download ``t.url`` into ``t.dest`` via ``t.dest.part`` (resumable), verify, rename."""
    part = _part(t.dest)
    failures = 0
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if t.size is not None and offset > t.size:
            log.warning("%s: partial file larger than expected; restarting", t.label)
            part.unlink()
            offset = 0
        if t.size is not None and offset == t.size:
            break  # already complete; verify below
        if t.size is not None:
            _check_disk(t.dest, t.size - offset)
        try:
            if _stream_once(t, part, offset, progress=progress, timeout=timeout, chunk_size=chunk_size):
                break
        except _Retryable as exc:
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"{t.label}: download failed after {failures} attempt(s): {exc}\n"
                    f"Partial data kept at {part}; re-run the fetch to resume."
                ) from exc
            wait = min(backoff * (2 ** (failures - 1)), 30.0)
            log.warning(
                "%s: %s -- retrying (%d/%d)%s", t.label, exc, failures, retries, f" in {wait:.1f}s" if wait else ""
            )
            if wait:
                time.sleep(wait)

    status = _check(part, t.size, t.sha256, t.sha256_prefix)
    if status in (STATUS_SHA, STATUS_SIZE):
        got_size = part.stat().st_size
        got = _hash_file(part).hexdigest()
        part.unlink()
        want = t.sha256 or (f"{t.sha256_prefix}..." if t.sha256_prefix else "-")
        raise ChecksumError(
            f"{t.label}: downloaded file failed verification ({status}) and was deleted.\n"
            f"  url:      {t.url}\n  expected: sha256 {want}, size {t.size}\n"
            f"  got:      sha256 {got}, size {got_size}\n"
            "The upstream file may have changed or the transfer was corrupted."
        )
    with open(part, "rb+") as f:  # durable before the rename makes it visible
        os.fsync(f.fileno())
    os.replace(part, t.dest)


def _stream_once(t: _Target, part: Path, offset: int, *, progress: bool, timeout: float, chunk_size: int) -> bool:
    """One HTTP request. True when the .part holds the complete body; raises _Retryable
    on transient trouble (data so far stays in .part), DownloadError on fatal errors."""
    try:
        resp = _open(t.url, offset, timeout)
    except urllib.error.HTTPError as e:
        code = e.code
        cr = _parse_content_range(e.headers.get("Content-Range") if e.headers else None)
        e.close()
        if code == 416 and offset > 0:
            total = cr[2] if cr else None
            if total is not None and total == offset:
                return True  # the .part already holds the whole file
            log.warning("%s: server rejected resume at byte %d; restarting", t.label, offset)
            part.unlink(missing_ok=True)
            raise _Retryable(f"HTTP 416 for range {offset}-") from None
        if code in (401, 403):
            hint = (
                " This repo is gated: accept its license on Hugging Face and set HF_TOKEN."
                if "huggingface.co" in t.url
                else ""
            )
            raise DownloadError(f"{t.label}: HTTP {code} for {t.url}.{hint}") from None
        if code in (408, 425, 429) or code >= 500:
            raise _Retryable(f"HTTP {code}") from None
        raise DownloadError(f"{t.label}: HTTP {code} for {t.url}") from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        raise _Retryable(f"{type(e).__name__}: {e}") from None
    except ValueError as e:  # malformed / unsupported URL (e.g. a bad --url override)
        raise DownloadError(f"{t.label}: cannot open {t.url!r}: {e}") from None

    with resp:
        status = getattr(resp, "status", None) or 200  # file:// responses have none
        length = resp.headers.get("Content-Length")
        length = int(length) if length and length.isdigit() else None
        if offset > 0 and status == 206:
            cr = _parse_content_range(resp.headers.get("Content-Range"))
            if not cr or cr[0] != offset:
                part.unlink(missing_ok=True)
                raise _Retryable(f"unexpected Content-Range {resp.headers.get('Content-Range')!r}")
            total = cr[2] if cr[2] is not None else (offset + length if length is not None else None)
            mode = "ab"
        else:
            if offset > 0:
                log.warning("%s: server ignored the Range request; restarting from 0", t.label)
            offset = 0
            total = length
            mode = "wb"
        if total is not None and t.size is not None and total != t.size:
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"{t.label}: server reports {total} bytes but the registry records {t.size} "
                f"for {t.url}; refusing to download (upstream changed? update pipeline/models.py)"
            )
        bar = _progress_bar(progress, total, offset, t.label)
        try:
            with open(part, mode) as f:
                try:
                    while True:
                        chunk = resp.read(chunk_size)
                        if not chunk:
                            break
                        f.write(chunk)
                        bar.update(len(chunk))
                except (OSError, http.client.HTTPException) as e:
                    raise _Retryable(f"connection lost ({type(e).__name__}: {e})") from None
        finally:
            bar.close()
    got = part.stat().st_size
    if total is not None and got < total:
        raise _Retryable(f"connection closed early ({got} of {total} bytes)")
    if total is not None and got > total:
        part.unlink()
        raise _Retryable(f"received more data than announced ({got} > {total})")
    return True


class _FileLock:
    def __init__(self, path: Path):
        self.path = path
        self.fh = None

    def __enter__(self):
        if fcntl is not None:
            self.fh = open(self.path, "a+")
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            fcntl.flock(self.fh.fileno(), fcntl.LOCK_UN)
            self.fh.close()


def fetch(
    names: list[str],
    cache_dir=None,
    *,
    progress: bool = True,
    url_override: dict[str, str] | None = None,
    retries: int = 3,
    registry: Mapping[str, WeightEntry] | None = None,
    timeout: float = 60.0,
    backoff: float = 1.0,
    chunk_size: int = 1 << 20,
) -> list[Path]:
    """Download the named entries into the cache; returns their resolved paths.

    Present files that verify are skipped (a present file that fails verification is
    re-downloaded). ``url_override`` maps an entry name to another URL (for
    multi-file entries: ``"name/relpath"`` -> URL, or ``"name"`` -> base URL).
    ``retries`` is the number of extra attempts after a transient failure; each
    attempt resumes from the ``.part`` size.
    """
    reg = _registry(registry)
    cache = _cache(cache_dir)
    entries = [get_entry(n, reg) for n in names]  # fail fast on unknown names
    done: set[Path] = set()
    out: list[Path] = []
    for entry in entries:
        for t in _targets(entry, cache, url_override):
            if t.dest in done:  # e.g. sea_raft_l shares sea_raft_m's file
                continue
            t.dest.parent.mkdir(parents=True, exist_ok=True)
            with _FileLock(t.dest.with_name("." + t.dest.name + ".lock")):
                if t.dest.is_file():
                    st = _check(t.dest, t.size, t.sha256, t.sha256_prefix)
                    if st in (STATUS_OK, STATUS_UNVERIFIED):
                        log.info("%s: present (%s), skipping", t.label, st)
                        done.add(t.dest)
                        continue
                    log.warning("%s: present file failed verification (%s); re-downloading", t.label, st)
                    t.dest.unlink()
                log.info("%s: downloading %s", t.label, t.url)
                _download(
                    t, progress=progress, retries=retries, timeout=timeout, backoff=backoff, chunk_size=chunk_size
                )
            done.add(t.dest)
        out.append(cache / entry.filename)
    return out


# --------------------------------------------------------------------------- presets


def presets_weights(cfg, registry: Mapping[str, WeightEntry] | None = None) -> list[str]:
    """Registry entries a pipeline config needs from the cache, in pipeline order (from the stages'
    declared needs; weights given as an explicit local path are not cache entries)."""
    from vid2pair.pipeline.plan import needs

    reg = _registry(registry)
    return [n.name for n in needs(cfg) if n.what == "weights" and not n.path and n.name in reg]


def check_build_weights(cfg, cache_dir=None, stages=None, registry=None) -> list[str]:
    """Problems that would make a build's model stages reject every pair: missing weights (cache
    entries and explicit paths) and missing optional extras, from the enabled stages' declared
    needs. ``[]`` when everything is present. Run by ``vid2pair build`` before any work
    (``runner.check_weights``)."""
    import importlib.util

    from vid2pair.core.weights import weights_present
    from vid2pair.pipeline.plan import needs

    problems: list[str] = []
    for n in needs(cfg, *(() if stages is None else (stages,))):
        if n.what == "weights" and n.path:
            if not Path(n.path).expanduser().exists():
                problems.append(f"{n.path_key}: {n.path} does not exist (weights for {n.key})")
        elif n.what == "weights":
            msg = weights_present(n.name, cache_dir=cache_dir, config_key=n.path_key or None, registry=registry)
            if msg:
                problems.append(f"{n.key}: {msg}")
        elif importlib.util.find_spec(n.name) is None:
            problems.append(f"{n.key} needs the {n.name} package: pip install 'vid2pair[{n.extra}]'")
    return problems


def preset_weight_names(preset: str, registry: Mapping[str, WeightEntry] | None = None) -> list[str]:
    """Cache entries a pipeline preset (or a trainer preset, ``train_*``) needs; name or YAML path."""
    from vid2pair.pipeline.config import ConfigError, load_config

    try:
        return presets_weights(load_config(preset), registry)
    except ConfigError as first:
        from vid2pair.trainer.config import load_train_config, required_weights

        try:
            reg = _registry(registry)
            return [n for n in required_weights(load_train_config(preset)) if n in reg]
        except ConfigError:
            raise FileNotFoundError(f"preset {preset!r}: {first}") from None


# --------------------------------------------------------------------------- CLI


def models_add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``models`` (list | fetch | verify) on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "models",
        help="list / fetch / verify published model weights",
        description="Manage the model weights cache (see pipeline/models.py).",
    )
    p.add_argument(
        "--cache-dir",
        default=None,
        help="weights cache (default: $VID2PAIR_CACHE, else "
        "$XDG_CACHE_HOME/vid2pair/models, else ~/.cache/vid2pair/models)",
    )
    sub = p.add_subparsers(dest="models_cmd", metavar="{list,fetch,verify}")

    def common(sp):
        # SUPPRESS: don't clobber a --cache-dir given before the sub-command
        sp.add_argument("--cache-dir", default=argparse.SUPPRESS, help="weights cache (same as `models --cache-dir`)")

    sp = sub.add_parser("list", help="table of registered weights and local presence")
    common(sp)
    sp = sub.add_parser("fetch", help="download weights (resumable, sha256-verified)")
    sp.add_argument("names", nargs="*", help="registry entries (see `models list`)")
    sp.add_argument("--preset", default=None, help="fetch everything this preset (name or YAML path) needs")
    sp.add_argument("--all", action="store_true", help="fetch every registered entry")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--retries", type=int, default=3)
    sp.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="download NAME from URL instead (mirror); repeatable",
    )
    common(sp)
    sp = sub.add_parser("verify", help="check local files against recorded size/sha256")
    sp.add_argument("names", nargs="*")
    sp.add_argument("--preset", default=None)
    common(sp)
    p.set_defaults(func=cli_models)
    return p


def _fmt_size(entry: WeightEntry) -> str:
    s = entry.display_size()
    if s is None:
        return "?"
    mb = s / _MB
    txt = f"{mb:.1f}" if mb < 100 else f"{mb:.0f}"
    return txt if entry.size_is_exact() else "~" + txt


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for j, r in enumerate(rows):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _names_from_args(ns, reg) -> list[str]:
    names = list(getattr(ns, "names", None) or [])
    preset = getattr(ns, "preset", None)
    if preset:
        for n in preset_weight_names(preset, reg):
            if n not in names:
                names.append(n)
    return names


def cli_models(ns) -> int:
    """Handler for ``vid2pair models list|fetch|verify``; returns the exit code."""
    reg = _registry(getattr(ns, "registry", None))
    cache = _cache(getattr(ns, "cache_dir", None))
    cmd = getattr(ns, "models_cmd", None) or "list"
    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)

    if cmd == "list":
        rows = [["name", "used_by", "size (MB)", "present", "check", "license"]]
        for name, e in reg.items():
            rows.append([name, e.used_by, _fmt_size(e), _presence(e, cache), e.check_kind(), e.license])
        print(f"cache: {cache}")
        print(_table(rows))
        if any(e.check_kind() != "sha256" for e in reg.values()):
            print(
                "\ncheck: 'sha256-prefix' = only the 8-hex prefix from the file name is known; "
                "'size only'/'none'/'(k/n files)' = no full sha256 recorded, verified by size "
                "where known."
            )
        return 0

    try:
        names = _names_from_args(ns, reg)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in reg]
    if unknown:
        print(f"error: unknown model weights: {', '.join(unknown)}; known: {', '.join(reg)}", file=sys.stderr)
        return 2

    if cmd == "fetch":
        if getattr(ns, "all", False):
            names = list(reg)
        if not names:
            print(
                "error: nothing to fetch: name entries, or use --preset P / --all (see `vid2pair models list`)",
                file=sys.stderr,
            )
            return 2
        override: dict[str, str] = {}
        for item in getattr(ns, "url", None) or []:
            key, sep, url = item.partition("=")
            if not sep or not url:
                print(f"error: --url expects NAME=URL, got {item!r}", file=sys.stderr)
                return 2
            override[key] = url
        try:
            paths = fetch(
                names,
                cache,
                progress=not getattr(ns, "no_progress", False),
                url_override=override or None,
                retries=getattr(ns, "retries", 3),
                registry=reg,
            )
        except (DownloadError, OSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        for n, pth in zip(names, paths):
            print(f"{n}: {pth}")
        return 0

    if cmd == "verify":
        explicit = bool(names)
        results = verify(names if explicit else None, cache, registry=reg)
        print(f"cache: {cache}")
        print(_table([["name", "status"]] + [[n, s] for n, s in results]))
        bad = {STATUS_SIZE, STATUS_SHA} | ({STATUS_MISSING} if explicit else set())
        return 1 if any(s in bad for _, s in results) else 0

    print(f"error: unknown models command {cmd!r}", file=sys.stderr)
    return 2
