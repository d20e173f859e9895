"""Registry of every published model weight vid2pair uses, plus fetch / verify / resolve.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

try:  # POSIX advisory locks so parallel fetches of one file don't interleave
    import fcntl
except ImportError:  # pragma: no cover - non-POSIX
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = [
    "WeightEntry",
    "REGISTRY",
    "MissingWeightsError",
    "DownloadError",
    "ChecksumError",
    "default_cache_dir",
    "get_entry",
    "register",
    "entry_path",
    "resolve_weights",
    "fetch",
    "verify",
    "presets_weights",
    "models_add_subparser",
    "cli_models",
]

STATUS_OK = "ok"
STATUS_MISSING = "missing"
STATUS_SIZE = "size_mismatch"
STATUS_SHA = "sha256_mismatch"
STATUS_UNVERIFIED = "unverified (no sha256 recorded)"
# worst first; a multi-file entry reports the worst status of its files
_STATUS_RANK = {STATUS_MISSING: 0, STATUS_SHA: 1, STATUS_SIZE: 2, STATUS_UNVERIFIED: 3, STATUS_OK: 4}

_USER_AGENT = "vid2pair-models/0.1 (+urllib)"
# hosts that receive an HF token (gated repos); never forwarded to the CDN a redirect points at
_AUTH_HOSTS: tuple[str, ...] = ("huggingface.co",)
_HASH_BLOCK = 4 << 20


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class WeightEntry:
    """One published weight (single file) or one multi-file model repo snapshot.

    ``files`` (multi-file entries only): tuples ``(relative_path, url, size, sha256)``;
    they are stored under ``<cache>/<filename>/`` and ``filename`` is then the
    directory name (by convention the entry name).
    """

    name: str
    filename: str
    url: str
    size: int | None
    sha256: str | None
    license: str
    used_by: str
    files: tuple = ()
    sha256_prefix: str | None = None  # hex prefix from torch.hub-style names ("-ff5fadd5.pth")
    approx_size: int | None = None  # bytes, display only (exact size unknown)
    gated: bool = False  # needs an accepted license + HF token
    notes: str = ""
    source: str = ""  # where the facts above were established

    @property
    def is_multi(self) -> bool:
        return bool(self.files)

    def display_size(self) -> int | None:
        if self.is_multi:
            sizes = [f[2] for f in self.files]
            if all(s is not None for s in sizes):
                return sum(sizes)
            return self.approx_size
        return self.size if self.size is not None else self.approx_size

    def size_is_exact(self) -> bool:
        if self.is_multi:
            return all(f[2] is not None for f in self.files)
        return self.size is not None

    def check_kind(self) -> str:
        """How a local copy gets verified: 'sha256', 'sha256-prefix', 'size only', 'none'
        (multi-file: 'sha256 (N/M files)' when only some files have a digest)."""
        if self.is_multi:
            n = len(self.files)
            with_sha = sum(1 for f in self.files if f[3])
            if with_sha == n:
                return "sha256"
            return f"sha256 ({with_sha}/{n} files)"
        if self.sha256:
            return "sha256"
        if self.sha256_prefix:
            return "sha256-prefix"
        if self.size is not None:
            return "size only"
        return "none"


def _hf(repo: str, revision: str, path: str) -> str:
    return f"https://huggingface.co/{repo}/resolve/{revision}/{path}"


_MB = 1_000_000

# Revisions pinned so a recorded sha256 can't silently drift (SVD is gated; "main").
_COTRACKER3_REV = "840d860610c48804303618c2deee4813cd465d83"
_DPT_REV = "11eaf7a1cf4bd70740697dbc216f98980c0aeb03"
_SVD_REPO = "stabilityai/stable-video-diffusion-img2vid-xt-1-1"
_SVD_REV = "main"

_PTLFLOW_RELEASE = "https://github.com/hmorimitsu/ptlflow/releases/download/weights1"
_SEA_RAFT_NOTE = (
    "ptlflow has no default checkpoint; its docs/examples use ckpt_path='things' "
    "(Tartan+Chairs+Things), which is what we register. Other ptlflow variants: "
    "tartan, chairs, sintel, kitti, spring (same URL pattern, different hash)."
)

_ENTRIES: tuple[WeightEntry, ...] = (
    # ---- optical flow: torchvision RAFT --------------------------------------------
    WeightEntry(
        name="raft_small",
        filename="raft_small_C_T_V2-01064c6d.pth",
        url="https://download.pytorch.org/models/raft_small_C_T_V2-01064c6d.pth",
        size=4006189,
        sha256="01064c6dba73b0fc9fc8edf772248560a00a3acfd62ac6677e9eeebad9680e27",
        sha256_prefix="01064c6d",
        license="BSD-3-Clause (torchvision)",
        used_by="flow: raft_small",
        notes="torchvision Raft_Small_Weights.C_T_V2 (trained on FlyingChairs+FlyingThings3D).",
        source=(
            "URL: torchvision/models/optical_flow/raft.py (installed torchvision); "
            "sha256+size: Git LFS pointer of an HF mirror (hr16/RAFT-v2), consistent with "
            "the filename sha256 prefix and torchvision's _file_size 3.821 MiB."
        ),
    ),
    WeightEntry(
        name="raft_large",
        filename="raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        url="https://download.pytorch.org/models/raft_large_C_T_SKHT_V2-ff5fadd5.pth",
        size=21106607,
        sha256="ff5fadd56d26b40647388883af1547351ea17868b765c05b27231e72dd16a322",
        sha256_prefix="ff5fadd5",
        license="BSD-3-Clause (torchvision)",
        used_by="flow: raft_large",
        notes=(
            "torchvision Raft_Large_Weights.C_T_SKHT_V2 (Chairs+Things, fine-tuned on "
            "Sintel+KITTI+HD1K+Things)."
        ),
        source=(
            "URL: torchvision/models/optical_flow/raft.py (installed torchvision); "
            "sha256+size: Git LFS pointer of an HF mirror (hr16/RAFT-v2), consistent with "
            "the filename sha256 prefix and torchvision's _file_size 20.129 MiB."
        ),
    ),
    # ---- optical flow: SEA-RAFT via ptlflow --------------------------------------------
    WeightEntry(
        name="sea_raft_s",
        filename="sea_raft_s-things-a15c1713.ckpt",
        url=f"{_PTLFLOW_RELEASE}/sea_raft_s-things-a15c1713.ckpt",
        size=None,
        sha256=None,
        sha256_prefix="a15c1713",
        approx_size=36 * _MB,
        license="BSD-3-Clause code (SEA-RAFT); weights license not specified",
        used_by="flow: sea_raft_s (ptlflow)",
        notes=_SEA_RAFT_NOTE + " approx size estimated from 8.9M parameters.",
        source=(
            "URL: ptlflow ptlflow/models/sea_raft/sea_raft.py SEARAFT_S.pretrained_checkpoints"
            "['things']; ptlflow loads it with torch.hub check_hash=True, so the hex in the "
            "name is a sha256 prefix. Full sha256 and exact size not established."
        ),
    ),
    WeightEntry(
        name="sea_raft_m",
        filename="sea_raft_m-things-ac45dd7f.ckpt",
        url=f"{_PTLFLOW_RELEASE}/sea_raft_m-things-ac45dd7f.ckpt",
        size=None,
        sha256=None,
        sha256_prefix="ac45dd7f",
        approx_size=79 * _MB,
        license="BSD-3-Clause code (SEA-RAFT); weights license not specified",
        used_by="flow: sea_raft_m (ptlflow)",
        notes=_SEA_RAFT_NOTE + " approx size estimated from 19.7M parameters.",
        source=(
            "URL: ptlflow sea_raft.py SEARAFT_M.pretrained_checkpoints['things']; "
            "sha256 prefix from the name (check_hash=True). Full sha256/size not established."
        ),
    ),
    WeightEntry(
        name="sea_raft_l",
        # ptlflow's SEARAFT_L points at the *M* checkpoints (same weights, 12 iterations
        # instead of 4), so this entry shares the file with sea_raft_m.
        filename="sea_raft_m-things-ac45dd7f.ckpt",
        url=f"{_PTLFLOW_RELEASE}/sea_raft_m-things-ac45dd7f.ckpt",
        size=None,
        sha256=None,
        sha256_prefix="ac45dd7f",
        approx_size=79 * _MB,
        license="BSD-3-Clause code (SEA-RAFT); weights license not specified",
        used_by="flow: sea_raft_l (ptlflow)",
        notes="Same file as sea_raft_m (ptlflow SEARAFT_L reuses the M checkpoints). "
        + _SEA_RAFT_NOTE,
        source="ptlflow sea_raft.py SEARAFT_L.pretrained_checkpoints (identical to SEARAFT_M's).",
    ),
    # ---- tracker: CoTracker3 -----------------------------------------------------------
    WeightEntry(
        name="cotracker3_offline",
        filename="cotracker3_scaled_offline.pth",
        url=_hf("facebook/cotracker3", _COTRACKER3_REV, "scaled_offline.pth"),
        size=101890938,
        sha256="2670d4562ed69326dda775a26e54883925cd11b6fc9b24cb7aa9f8078bce7834",
        license="CC-BY-NC-4.0 (facebook/cotracker3; non-commercial)",
        used_by="tracker: cotracker3 offline",
        notes="Stored as cotracker3_scaled_offline.pth (upstream name: scaled_offline.pth).",
        source="Git LFS pointer in facebook/cotracker3 (commit acc21f9, unchanged since).",
    ),
    WeightEntry(
        name="cotracker3_online",
        filename="cotracker3_scaled_online.pth",
        url=_hf("facebook/cotracker3", _COTRACKER3_REV, "scaled_online.pth"),
        size=101695610,
        sha256="205d34789f19699d64b22cf93f9b697f15f28d4025240e31532e504109837218",
        license="CC-BY-NC-4.0 (facebook/cotracker3; non-commercial)",
        used_by="tracker: cotracker3 online",
        notes="Stored as cotracker3_scaled_online.pth (upstream name: scaled_online.pth).",
        source="Git LFS pointer in facebook/cotracker3 (commit acc21f9, unchanged since).",
    ),
    # ---- segmenter: Segment Anything ---------------------------------------------------
    WeightEntry(
        name="sam_vit_b",
        filename="sam_vit_b_01ec64.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_b_01ec64.pth",
        size=375042383,
        sha256="ec2df62732614e57411cdcf32a23ffdf28910380d03139ee0f4fcbe91eb8c912",
        license="Apache-2.0 (segment-anything)",
        used_by="segmenter: sam vit_b",
        notes="The hex in SAM file names is an md5 prefix, not sha256.",
        source="sha256+size: identical Git LFS pointers in several independent HF re-uploads.",
    ),
    WeightEntry(
        name="sam_vit_l",
        filename="sam_vit_l_0b3195.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_l_0b3195.pth",
        size=1249524607,
        sha256="3adcc4315b642a4d2101128f611684e8734c41232a17c648ed1693702a49a622",
        license="Apache-2.0 (segment-anything)",
        used_by="segmenter: sam vit_l",
        notes="The hex in SAM file names is an md5 prefix, not sha256.",
        source="sha256+size: identical Git LFS pointers in several independent HF re-uploads.",
    ),
    WeightEntry(
        name="sam_vit_h",
        filename="sam_vit_h_4b8939.pth",
        url="https://dl.fbaipublicfiles.com/segment_anything/sam_vit_h_4b8939.pth",
        size=2564550879,
        sha256="a7bf3b02f3ebf1267aba913ff637d9a2d5c33d3173bb679e46d9f338c26f262e",
        license="Apache-2.0 (segment-anything)",
        used_by="segmenter: sam vit_h",
        notes="The hex in SAM file names is an md5 prefix (md5 4b8939a8...), not sha256.",
        source="sha256+size: identical Git LFS pointers in several independent HF re-uploads.",
    ),
    # ---- depth: DPT-Hybrid (MiDaS 3.0), transformers layout ---------------------------
    WeightEntry(
        name="dpt_hybrid_midas",
        filename="dpt_hybrid_midas",
        url=f"https://huggingface.co/Intel/dpt-hybrid-midas/tree/{_DPT_REV}",
        size=None,
        sha256=None,
        files=(
            ("config.json", _hf("Intel/dpt-hybrid-midas", _DPT_REV, "config.json"), None, None),
            (
                "preprocessor_config.json",
                _hf("Intel/dpt-hybrid-midas", _DPT_REV, "preprocessor_config.json"),
                382,
                None,
            ),
            (
                "pytorch_model.bin",
                _hf("Intel/dpt-hybrid-midas", _DPT_REV, "pytorch_model.bin"),
                None,
                "b6c4d44f9d96ca3fa76dd3bbb153989a60b4ad5526559f3c598562a368d687ec",
            ),
        ),
        approx_size=490 * _MB,
        license="Apache-2.0 (Intel/dpt-hybrid-midas)",
        used_by="depth: dpt_hybrid_midas",
        notes=(
            "Load with transformers DPTForDepthEstimation.from_pretrained(<dir>). "
            "model.safetensors exists only in an unmerged PR, so the .bin is used."
        ),
        source=(
            "file list + pinned revision: HF tree page of Intel/dpt-hybrid-midas; "
            "pytorch_model.bin sha256 from its Git LFS details (commit 45026d3). "
            "Exact size of the .bin and digests of the JSON files not established."
        ),
    ),
    # ---- trainer base model: Stable Video Diffusion XT 1.1 (gated) --------------------
    WeightEntry(
        name="svd_xt_1_1",
        filename="svd_xt_1_1",
        url=f"https://huggingface.co/{_SVD_REPO}",
        size=None,
        sha256=None,
        files=tuple(
            (p, _hf(_SVD_REPO, _SVD_REV, p), None, None)
            for p in (
                "model_index.json",
                "feature_extractor/preprocessor_config.json",
                "image_encoder/config.json",
                "image_encoder/model.fp16.safetensors",
                "scheduler/scheduler_config.json",
                "unet/config.json",
                "unet/diffusion_pytorch_model.fp16.safetensors",
                "vae/config.json",
                "vae/diffusion_pytorch_model.fp16.safetensors",
            )
        ),
        approx_size=(1260 + 3050 + 196) * _MB,
        gated=True,
        license=(
            "stable-video-diffusion-1-1-nc-community (gated on HF: accept it, then set HF_TOKEN)"
        ),
        used_by="trainer: svd_xt_1_1 base (diffusers, fp16 variant)",
        notes=(
            "diffusers layout, fp16 variant only: StableVideoDiffusionPipeline."
            "from_pretrained(<dir>, variant='fp16'). The single-file svd_xt_1_1.safetensors "
            "(~4.78 GB) and the fp32 diffusers weights are not fetched."
        ),
        source=(
            "file list/approx sizes: HF tree pages of re-uploads of this repo (diffusers "
            "layout added in upstream PR #5); no sha256 or exact size established."
        ),
    ),
)

REGISTRY: dict[str, WeightEntry] = {e.name: e for e in _ENTRIES}


def register(entry: WeightEntry, *, replace: bool = False) -> WeightEntry:
    """Add an entry to :data:`REGISTRY` (backends defined outside this module, tests)."""
    if entry.name in REGISTRY and not replace:
        raise ValueError(f"weight entry {entry.name!r} already registered")
    REGISTRY[entry.name] = entry
    return entry


def _registry(registry: Mapping[str, WeightEntry] | None) -> Mapping[str, WeightEntry]:
    # look the module global up at call time so monkeypatching REGISTRY works
    return REGISTRY if registry is None else registry


def get_entry(name: str, registry: Mapping[str, WeightEntry] | None = None) -> WeightEntry:
    reg = _registry(registry)
    try:
        return reg[name]
    except KeyError:
        raise KeyError(
            f"unknown model weights {name!r}; known: {', '.join(sorted(reg))}"
        ) from None


# --------------------------------------------------------------------------- paths


def default_cache_dir() -> Path:
    """$VID2PAIR_CACHE, else $XDG_CACHE_HOME/vid2pair/models, else ~/.cache/vid2pair/models."""
    env = os.environ.get("VID2PAIR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "vid2pair" / "models"


def _cache(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def entry_path(name: str, cache_dir=None, registry=None) -> Path:
    """Where an entry lives in the cache (file, or directory for multi-file entries)."""
    return _cache(cache_dir) / get_entry(name, registry).filename


def _part(path: Path) -> Path:
    return path.with_name(path.name + ".part")


@dataclass(frozen=True)
class _Target:
    label: str  # for messages / progress bars
    dest: Path
    url: str
    size: int | None
    sha256: str | None
    sha256_prefix: str | None


def _targets(entry: WeightEntry, cache: Path, url_override: Mapping[str, str] | None = None):
    over = url_override or {}
    if not entry.is_multi:
        url = over.get(entry.name, entry.url)
        return [
            _Target(entry.name, cache / entry.filename, url, entry.size, entry.sha256,
                    entry.sha256_prefix)
        ]
    root = cache / entry.filename
    out = []
    for rel, url, size, sha in entry.files:
        key = f"{entry.name}/{rel}"
        if key in over:
            url = over[key]
        elif entry.name in over:  # base URL for the whole repo snapshot
            url = over[entry.name].rstrip("/") + "/" + rel
        out.append(_Target(key, root / rel, url, size, sha, None))
    return out


# --------------------------------------------------------------------------- errors


class MissingWeightsError(FileNotFoundError):
    """Weights are not on disk. The message names the entry, the full path and the fix."""


class DownloadError(RuntimeError):
    """A download failed (HTTP error, connection trouble after all retries, disk space)."""


class ChecksumError(DownloadError):
    """A completed download did not match the recorded size / sha256."""


class _Retryable(Exception):
    pass


def _fetch_hint(name: str, cache: Path) -> str:
    cmd = f"vid2pair models fetch {name}"
    if cache != default_cache_dir():
        cmd += f" --cache-dir {cache}"
    return cmd


def _missing(entry: WeightEntry, path: Path, cache: Path, config_key: str | None,
             what: str = "not found") -> MissingWeightsError:
    line2 = f"Run `{_fetch_hint(entry.name, cache)}`"
    if config_key:
        line2 += f" (or pass a local path via {config_key})"
    line2 += "."
    if entry.gated:
        line2 += " Gated on Hugging Face: accept the license there and set HF_TOKEN first."
    return MissingWeightsError(
        f"Model weights '{entry.name}' ({entry.used_by}) {what}: {path}\n{line2}"
    )


# --------------------------------------------------------------------------- resolve


def resolve_weights(
    name: str,
    explicit: str | os.PathLike | None = None,
    cache_dir=None,
    config_key: str | None = None,
    *,
    registry: Mapping[str, WeightEntry] | None = None,
) -> Path:
    """Path of the weights for ``name``; never downloads.

    ``explicit`` (a user-supplied path, e.g. from the config) wins and must exist.
    Otherwise the cache is checked (existence and, where recorded, file size -- a
    cheap check; run ``vid2pair models verify`` for digests). Multi-file entries
    return their directory.
    """
    if explicit is not None and str(explicit) != "":
        p = Path(explicit).expanduser()
        if p.exists():
            return p
        key = f" (from {config_key})" if config_key else ""
        raise MissingWeightsError(
            f"Model weights '{name}': explicit path{key} does not exist: {p}\n"
            f"Fix the path, or drop it to use the cache and run `vid2pair models fetch {name}`."
        )
    entry = get_entry(name, registry)
    cache = _cache(cache_dir)
    path = cache / entry.filename
    for t in _targets(entry, cache):
        if not t.dest.is_file():
            if entry.is_multi and path.is_dir():  # name the first missing file
                raise _missing(entry, t.dest, cache, config_key, "incomplete, missing")
            raise _missing(entry, path, cache, config_key)
        if t.size is not None and t.dest.stat().st_size != t.size:
            raise _missing(
                entry, t.dest, cache, config_key,
                f"has the wrong size ({t.dest.stat().st_size} bytes, expected {t.size})",
            )
    return path


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


def verify(names: list[str] | None = None, cache_dir=None, *,
           registry: Mapping[str, WeightEntry] | None = None) -> list[tuple[str, str]]:
    """(name, status) per entry; status is one of "ok", "missing", "size_mismatch",
    "sha256_mismatch", "unverified (no sha256 recorded)". Multi-file entries report
    the worst status of their files. Files whose only check is a sha256 prefix are
    "ok" when the prefix matches. Hashes full files (slow for multi-GB weights)."""
    reg = _registry(registry)
    cache = _cache(cache_dir)
    out = []
    for name in (names if names is not None else list(reg)):
        entry = get_entry(name, reg)
        statuses = [_check(t.dest, t.size, t.sha256, t.sha256_prefix)
                    for t in _targets(entry, cache)]
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
    req = urllib.request.Request(
        url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    )
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

            return tqdm(total=total, initial=initial, unit="B", unit_scale=True,
                        unit_divisor=1024, desc=desc, file=sys.stderr, leave=True)
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


def _download(t: _Target, *, progress: bool, retries: int, timeout: float, backoff: float,
              chunk_size: int) -> None:
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
            if _stream_once(t, part, offset, progress=progress, timeout=timeout,
                            chunk_size=chunk_size):
                break
        except _Retryable as exc:
            failures += 1
            if failures > retries:
                raise DownloadError(
                    f"{t.label}: download failed after {failures} attempt(s): {exc}\n"
                    f"Partial data kept at {part}; re-run the fetch to resume."
                ) from exc
            wait = min(backoff * (2 ** (failures - 1)), 30.0)
            log.warning("%s: %s -- retrying (%d/%d)%s", t.label, exc, failures, retries,
                        f" in {wait:.1f}s" if wait else "")
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


def _stream_once(t: _Target, part: Path, offset: int, *, progress: bool, timeout: float,
                 chunk_size: int) -> bool:
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
            hint = (" This repo is gated: accept its license on Hugging Face and set HF_TOKEN."
                    if "huggingface.co" in t.url else "")
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
                    log.warning("%s: present file failed verification (%s); re-downloading",
                                t.label, st)
                    t.dest.unlink()
                log.info("%s: downloading %s", t.label, t.url)
                _download(t, progress=progress, retries=retries, timeout=timeout,
                          backoff=backoff, chunk_size=chunk_size)
            done.add(t.dest)
        out.append(cache / entry.filename)
    return out


# --------------------------------------------------------------------------- presets


def _get(obj: Any, key: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(key)
    return getattr(obj, key, None)


_SELECTOR_KEYS = ("backend", "model", "base_model")
_VARIANT_KEYS = ("variant", "model_type", "mode", "size")


def presets_weights(preset_cfg_dict, registry: Mapping[str, WeightEntry] | None = None) -> list[str]:
    """Registry entries a preset config needs, in config order, de-duplicated.

    Looks at every top-level section (``flow``, later ``tracker``, ``segmenter``,
    ``depth``, ``trainer``, ...) for ``backend`` / ``model`` / ``base_model`` values
    that name a registry entry, directly or combined with a ``variant`` /
    ``model_type`` / ``mode`` / ``size`` value (``backend: sam`` + ``model_type:
    vit_b`` -> ``sam_vit_b``). Sections with ``enabled: false`` or a non-empty
    ``weights`` path (a local file is used instead) are skipped; anything unknown is
    ignored.
    """
    reg = _registry(registry)
    found: list[str] = []
    if preset_cfg_dict is None:
        return found
    sections = (preset_cfg_dict.items() if isinstance(preset_cfg_dict, Mapping)
                else vars(preset_cfg_dict).items())
    for _, section in sections:
        if section is None or isinstance(section, (str, bytes, int, float, bool, list, tuple)):
            continue
        if _get(section, "enabled") is False or _get(section, "weights"):
            continue
        for key in _SELECTOR_KEYS:
            val = _get(section, key)
            if not isinstance(val, str) or not val:
                continue
            base = val.strip().lower().replace("-", "_")
            cands = [base]
            for vk in _VARIANT_KEYS:
                var = _get(section, vk)
                if isinstance(var, str) and var:
                    cands.insert(0, f"{base}_{var.strip().lower().replace('-', '_')}")
            for c in cands:
                if c in reg:
                    if c not in found:
                        found.append(c)
                    break
    # keys of this project's config that name weights without a generic selector
    col = preset_cfg_dict.get("collage") if isinstance(preset_cfg_dict, Mapping) else None
    if isinstance(col, Mapping) and col.get("enabled", True):
        if col.get("segmenter") == "sam" and not col.get("sam_checkpoint"):
            found.append(f"sam_{col.get('sam_model_type', 'vit_b')}")
        if col.get("depth") == "dpt" and not col.get("dpt_weights"):
            found.append("dpt_hybrid_midas")
    tr = preset_cfg_dict.get("track") if isinstance(preset_cfg_dict, Mapping) else None
    if isinstance(tr, Mapping) and tr.get("enabled", True) and str(tr.get("backend", "")).startswith("cotracker3") \
            and not tr.get("checkpoint"):
        found.append(str(tr["backend"]))
    return [n for i, n in enumerate(found) if n in reg and n not in found[:i]]


def check_build_weights(cfg, cache_dir=None) -> list[str]:
    """Problems that would make a build's model stages reject every pair: missing weights (cache
    entries and explicit paths) and missing optional extras. ``[]`` when everything is present.
    Run by ``vid2pair build`` before any work (``runner.check_weights``)."""
    import importlib.util

    d = cfg.to_dict() if hasattr(cfg, "to_dict") else dict(cfg)
    problems: list[str] = []
    for name in presets_weights(d):
        try:
            resolve_weights(name, cache_dir=cache_dir)
        except MissingWeightsError as e:
            problems.append(str(e))
    flow, col, tr = d.get("flow") or {}, d.get("collage") or {}, d.get("track") or {}
    explicit = [("flow.weights", flow.get("weights"), True)]
    explicit += [("collage.sam_checkpoint", col.get("sam_checkpoint"), col.get("enabled", True)
                  and col.get("segmenter") == "sam"),
                 ("collage.dpt_weights", col.get("dpt_weights"), col.get("enabled", True) and col.get("depth") == "dpt"),
                 ("track.checkpoint", tr.get("checkpoint"), tr.get("enabled", True)
                  and str(tr.get("backend", "")).startswith("cotracker3"))]
    for key, path, used in explicit:
        if used and path and not Path(path).expanduser().exists():
            problems.append(f"{key}: {path} does not exist")
    extras = []
    if str(flow.get("backend", "")).startswith("sea_raft"):
        extras.append(("ptlflow", "sea-raft", f"flow.backend={flow.get('backend')}"))
    if col.get("enabled", True) and col.get("segmenter") == "sam":
        extras.append(("segment_anything", "collage", "collage.segmenter=sam"))
    if col.get("enabled", True) and col.get("depth") == "dpt":
        extras.append(("transformers", "collage", "collage.depth=dpt"))
    for mod, extra, why in extras:
        if importlib.util.find_spec(mod) is None:
            problems.append(f"{why} needs the {mod} package: pip install 'vid2pair[{extra}]'")
    return problems


def _load_preset(preset: str) -> Any:
    """A preset name (configs/<name>.yaml) -> the resolved config mapping; a YAML path -> its mapping."""
    from vid2pair.pipeline.config import ConfigError, load_config

    p = Path(preset).expanduser()
    if p.is_file():
        import yaml

        return yaml.safe_load(p.read_text()) or {}

    try:
        return load_config(preset).to_dict()
    except ConfigError as e:
        raise FileNotFoundError(f"preset {preset!r}: {e}") from None


# --------------------------------------------------------------------------- CLI


def models_add_subparser(subparsers) -> argparse.ArgumentParser:
    """Register ``models`` (list | fetch | verify) on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "models",
        help="list / fetch / verify published model weights",
        description="Manage the model weights cache (see pipeline/models.py).",
    )
    p.add_argument("--cache-dir", default=None,
                   help="weights cache (default: $VID2PAIR_CACHE, else "
                        "$XDG_CACHE_HOME/vid2pair/models, else ~/.cache/vid2pair/models)")
    sub = p.add_subparsers(dest="models_cmd", metavar="{list,fetch,verify}")

    def common(sp):
        # SUPPRESS: don't clobber a --cache-dir given before the sub-command
        sp.add_argument("--cache-dir", default=argparse.SUPPRESS,
                        help="weights cache (same as `models --cache-dir`)")

    sp = sub.add_parser("list", help="table of registered weights and local presence")
    common(sp)
    sp = sub.add_parser("fetch", help="download weights (resumable, sha256-verified)")
    sp.add_argument("names", nargs="*", help="registry entries (see `models list`)")
    sp.add_argument("--preset", default=None,
                    help="fetch everything this preset (name or YAML path) needs")
    sp.add_argument("--all", action="store_true", help="fetch every registered entry")
    sp.add_argument("--no-progress", action="store_true", help="no progress bars")
    sp.add_argument("--retries", type=int, default=3)
    sp.add_argument("--url", action="append", default=[], metavar="NAME=URL",
                    help="download NAME from URL instead (mirror); repeatable")
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
        for n in presets_weights(_load_preset(preset), reg):
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
            rows.append([name, e.used_by, _fmt_size(e), _presence(e, cache), e.check_kind(),
                         e.license])
        print(f"cache: {cache}")
        print(_table(rows))
        if any(e.check_kind() != "sha256" for e in reg.values()):
            print("\ncheck: 'sha256-prefix' = only the 8-hex prefix from the file name is known; "
                  "'size only'/'none'/'(k/n files)' = no full sha256 recorded, verified by size "
                  "where known.")
        return 0

    try:
        names = _names_from_args(ns, reg)
    except (FileNotFoundError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    unknown = [n for n in names if n not in reg]
    if unknown:
        print(f"error: unknown model weights: {', '.join(unknown)}; "
              f"known: {', '.join(reg)}", file=sys.stderr)
        return 2

    if cmd == "fetch":
        if getattr(ns, "all", False):
            names = list(reg)
        if not names:
            print("error: nothing to fetch: name entries, or use --preset P / --all "
                  "(see `vid2pair models list`)", file=sys.stderr)
            return 2
        override: dict[str, str] = {}
        for item in getattr(ns, "url", None) or []:
            key, sep, url = item.partition("=")
            if not sep or not url:
                print(f"error: --url expects NAME=URL, got {item!r}", file=sys.stderr)
                return 2
            override[key] = url
        try:
            paths = fetch(names, cache, progress=not getattr(ns, "no_progress", False),
                          url_override=override or None, retries=getattr(ns, "retries", 3),
                          registry=reg)
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
