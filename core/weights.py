"""Registry of every published model weight vid2pair uses, and where each lives on disk.

Every model backend registers its published weights here: name, source URL, size, sha256 and a
short license note. Nothing in the pipeline downloads weights at run time: stages call
:func:`resolve_weights`, which only looks on disk and raises :class:`MissingWeightsError` with the
exact ``vid2pair models fetch NAME`` command when the file is absent. Downloads happen only through
:mod:`vid2pair.pipeline.models` (``vid2pair models fetch``).

Cache layout (``default_cache_dir()``)::

    <cache>/raft_large_C_T_SKHT_V2-ff5fadd5.pth     single-file entry
    <cache>/dpt_hybrid_midas/config.json            multi-file entry (HF repo):
    <cache>/dpt_hybrid_midas/pytorch_model.bin      resolve_weights returns the dir

Where the registry facts come from is recorded per entry in ``WeightEntry.source``. A ``sha256``
of ``None`` means we could not establish the digest; such files are checked by ``sha256_prefix``
(the hex torch.hub-style file names carry) and/or size.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from vid2pair.core.errors import MissingWeightsError

__all__ = [
    "WeightEntry",
    "REGISTRY",
    "MissingWeightsError",
    "default_cache_dir",
    "get_entry",
    "register",
    "entry_path",
    "resolve_weights",
    "weights_present",
]

STATUS_OK = "ok"
STATUS_MISSING = "missing"
STATUS_SIZE = "size_mismatch"
STATUS_SHA = "sha256_mismatch"
STATUS_UNVERIFIED = "unverified (no sha256 recorded)"
# worst first; a multi-file entry reports the worst status of its files
_STATUS_RANK = {STATUS_MISSING: 0, STATUS_SHA: 1, STATUS_SIZE: 2, STATUS_UNVERIFIED: 3, STATUS_OK: 4}


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
        notes=("torchvision Raft_Large_Weights.C_T_SKHT_V2 (Chairs+Things, fine-tuned on Sintel+KITTI+HD1K+Things)."),
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
        notes="Same file as sea_raft_m (ptlflow SEARAFT_L reuses the M checkpoints). " + _SEA_RAFT_NOTE,
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
    # ---- depth: DPT-Large (MiDaS 3.0, what Magic Fixup uses), transformers layout -----------
    WeightEntry(
        name="dpt_large",
        filename="dpt_large",
        url="https://huggingface.co/Intel/dpt-large/tree/main",
        size=None,
        sha256=None,
        files=(
            ("config.json", _hf("Intel/dpt-large", "main", "config.json"), None, None),
            ("preprocessor_config.json", _hf("Intel/dpt-large", "main", "preprocessor_config.json"), None, None),
            ("pytorch_model.bin", _hf("Intel/dpt-large", "main", "pytorch_model.bin"), None, None),
        ),
        approx_size=1370 * _MB,
        license="Apache-2.0 (Intel/dpt-large)",
        used_by="depth: dpt_large (Magic Fixup's MiDaS DPT-Large)",
        notes="Load with transformers DPTForDepthEstimation.from_pretrained(<dir>).",
        source=(
            "file names: the transformers DPT layout of Intel/dpt-large on the HF hub; no revision pinned, "
            "sizes and digests not established here (no network): verified by presence only."
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
        license=("stable-video-diffusion-1-1-nc-community (gated on HF: accept it, then set HF_TOKEN)"),
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
    return REGISTRY if registry is None else registry


def get_entry(name: str, registry: Mapping[str, WeightEntry] | None = None) -> WeightEntry:
    reg = _registry(registry)
    try:
        return reg[name]
    except KeyError:
        raise KeyError(f"unknown model weights {name!r}; known: {', '.join(sorted(reg))}") from None


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
        return [_Target(entry.name, cache / entry.filename, url, entry.size, entry.sha256, entry.sha256_prefix)]
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


def _fetch_hint(name: str, cache: Path) -> str:
    cmd = f"vid2pair models fetch {name}"
    if cache != default_cache_dir():
        cmd += f" --cache-dir {cache}"
    return cmd


def _missing(
    entry: WeightEntry, path: Path, cache: Path, config_key: str | None, what: str = "not found"
) -> MissingWeightsError:
    line2 = f"Run `{_fetch_hint(entry.name, cache)}`"
    if config_key:
        line2 += f" (or pass a local path via {config_key})"
    line2 += "."
    if entry.gated:
        line2 += " Gated on Hugging Face: accept the license there and set HF_TOKEN first."
    return MissingWeightsError(f"Model weights '{entry.name}' ({entry.used_by}) {what}: {path}\n{line2}")


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
                entry,
                t.dest,
                cache,
                config_key,
                f"has the wrong size ({t.dest.stat().st_size} bytes, expected {t.size})",
            )
    return path


def weights_present(
    name: str,
    explicit: str | os.PathLike | None = None,
    cache_dir=None,
    config_key: str | None = None,
    *,
    registry=None,
) -> str | None:
    """None when :func:`resolve_weights` would succeed, else its message (the pre-flight check)."""
    try:
        resolve_weights(name, explicit, cache_dir, config_key, registry=registry)
    except MissingWeightsError as e:
        return str(e)
    return None
