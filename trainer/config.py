"""Typed, validated trainer configuration (``configs/train_*.yaml``).

Same rules as the pipeline config (:mod:`pipeline.config`, whose helpers are reused): a tree of
dataclasses; a YAML preset and ``--set key.sub=value`` overrides are merged onto the defaults and
validated before anything is built. An unknown key, a wrong type or an impossible range raises
:class:`pipeline.config.ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from vid2pair.core.spec import build as _build
from vid2pair.pipeline.config import ConfigError, load_config_data, preset_path

__all__ = [
    "TrainerConfig",
    "load_train_config",
    "train_config_from_dict",
    "ConfigError",
    "TASKS",
    "signal_channels",
    "required_weights",
    "resolve_grad_accum",
]

TASKS = ("sketch", "drag", "coarse", "collage")


def signal_channels(task: str) -> int:
    """Channels of the conditioning image the data loader produces for ``task``.

    sketch: 1 (strokes, 0/1) - coarse / collage: 4 (RGB in [-1, 1] + hole mask 0/1) -
    drag: 3 (handle blobs, target blobs, source->target segments with a 0.25->1 ramp).
    """
    return {"sketch": 1, "coarse": 4, "collage": 4, "drag": 3}[task]


@dataclass
class DataConfig:
    # shard specs: local paths, globs ('/d/shards/*.tar'), brace lists ('pairs-{000000..000099}.tar'),
    # a vid2pair output directory (its shards/), 'pipe:CMD' and object-store URLs (s3://, gs://, http(s)://)
    train: Union[str, list[str]] = field(default_factory=list)
    eval: Optional[Union[str, list[str]]] = None  # None: the eval split of `train` (by key hash)
    eval_permille: int = 50  # sha1(key or clip) mod 1000 < this -> eval split (never trained on); 0: no split
    eval_split_by: str = "key"  # key: per pair | clip: whole clips held out (no clip in both splits)
    max_eval: int = 200  # FramePainter evaluates on 200 held-out pairs
    batch_size: int = 1  # per process
    num_workers: int = 2  # DataLoader workers per process
    prefetch_factor: int = 2
    shuffle_buffer: int = 256  # samples (raw, before decoding)
    shuffle_shards: bool = True
    resampled: bool = False  # sample shards with replacement forever (wds.ResampledShards): multi-node
    on_error: str = "raise"  # raise | skip (skipped samples/shards are counted and logged)
    drag_min_points: int = 1  # drag task: points drawn per training sample (uniform in [min, max])
    drag_max_points: int = 16  # also the padded length of the point tensor
    drag_sigma_px: float = 1.5  # drag raster: blob sigma at the model resolution
    s3_command: str = "aws s3 cp {url} -"  # how s3:// URLs are streamed (pipe:)


@dataclass
class TinyModelConfig:
    base_channels: int = 32
    channel_mults: list[int] = field(default_factory=lambda: [1, 2, 2])
    num_res_blocks: int = 1
    attention: bool = True  # self-attention at the lowest resolution
    dropout: float = 0.0
    prediction: str = "v"  # v | eps
    residual: bool = False  # diffuse (target - source) / 2 instead of the target (measured worse on the demo data)
    schedule: str = "cosine"  # cosine | linear
    num_train_timesteps: int = 1000
    sample_steps: int = 25  # DDIM steps for eval predictions


@dataclass
class FramePainterConfig:
    # pretrained (SVD weights from a local dir) | svd_random (SVD architecture, random weights: throughput /
    # memory runs without the gated weights) | tiny_random (a tiny random config: tests, smoke runs)
    init: str = "pretrained"
    base_model: str = "svd_xt_1_1"  # registry entry (pipeline/models.py), resolved from the model cache
    weights: Optional[str] = None  # explicit local diffusers directory of SVD (wins over the cache)
    variant: Optional[str] = "fp16"  # safetensors variant in the directory (None: plain files)
    trainable: str = "all"  # all (U-Net + control encoder) | attention (attention layers + encoder + matching)
    frozen_dtype: str = "auto"  # VAE / CLIP dtype: auto (bf16 on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    gradient_checkpointing: bool = True
    control_channels: list[int] = field(default_factory=lambda: [64, 128, 256])
    control_scale: float = 0.2
    matching: bool = True  # matching attention branch beside every spatial self-attention
    match_weight: float = 1.0  # L = L_diff + match_weight * L_match
    match_max_tokens: int = 4096  # supervise matching attention at token grids with <= this many tokens
    drag_injection: bool = True  # drag task: copy source-point tokens onto target-point tokens
    noise_aug_strength: float = 0.02
    fps_id: int = 6
    motion_bucket_id: int = 128
    p_mean: float = 0.7  # training noise: log(sigma) ~ N(p_mean, p_std^2) (EDM)
    p_std: float = 1.6
    sigma_min: float = 0.002  # sampler (Karras schedule, Euler)
    sigma_max: float = 700.0
    sample_steps: int = 25
    clip_size: Optional[int] = None  # CLIP input size (None: the image encoder's config)


@dataclass
class ModelConfig:
    name: str = "tiny"  # tiny | framepainter
    resolution: list[int] = field(default_factory=lambda: [64, 96])  # [H, W] the model trains at
    tiny: TinyModelConfig = field(default_factory=TinyModelConfig)
    framepainter: FramePainterConfig = field(default_factory=FramePainterConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    eps: float = 1e-8
    schedule: str = "constant"  # constant | cosine | linear (after warmup)
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0  # cosine / linear end at lr * this


@dataclass
class TrainLoopConfig:
    output_dir: str = "runs/{name}"  # {name} is replaced by the config name
    max_steps: int = 1000  # optimizer steps
    grad_accum: Optional[int] = None  # micro-batches per step; None: from total_batch_size (else 1)
    total_batch_size: Optional[int] = None  # batch_size x world_size x grad_accum must equal this
    grad_clip: Optional[float] = 1.0  # max global grad norm; None: no clipping
    precision: str = "auto"  # auto (bf16 autocast on GPU, fp32 on CPU) | fp32 | bf16 | fp16
    device: str = "auto"  # auto | cpu | cuda
    ema_decay: Optional[float] = 0.999  # None: no EMA
    log_every: int = 10
    ckpt_every: int = 1000
    keep_checkpoints: int = 3
    eval_every: int = 500  # eval images + PSNR/SSIM on a fixed eval batch (rank 0); 0: never
    eval_images: int = 4
    num_threads: Optional[int] = None  # torch CPU threads per process (None: torch's default)
    deterministic: bool = False  # torch.use_deterministic_algorithms (CPU runs are deterministic anyway)
    compile: bool = False  # torch.compile the model (GPU)


@dataclass
class EvalConfig:
    metrics: list[str] = field(default_factory=lambda: ["psnr", "ssim", "lpips", "clip"])
    batch_size: int = 4
    use_ema: bool = True
    sample_steps: Optional[int] = None  # None: the model's default
    lpips_net: str = "alex"  # alex | vgg (needs the `lpips` package and torchvision backbone weights cached)
    clip_weights: Optional[str] = None  # local transformers CLIP vision dir for the CLIP-I score
    save_images: int = 8  # prediction grids written by `vid2pair eval`


@dataclass
class TrainerConfig:
    name: str = "custom"
    seed: int = 0
    task: str = "sketch"  # sketch | drag | coarse | collage
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainLoopConfig = field(default_factory=TrainLoopConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    @property
    def output_dir(self) -> Path:
        return Path(self.train.output_dir.replace("{name}", self.name))

    @property
    def train_shards(self) -> list[str]:
        return _as_list(self.data.train)

    @property
    def eval_shards(self) -> Optional[list[str]]:
        return None if self.data.eval is None else _as_list(self.data.eval)


def _as_list(v) -> list[str]:
    return [v] if isinstance(v, str) else list(v)


CHOICES = {
    "task": set(TASKS),
    "data.on_error": {"raise", "skip"},
    "data.eval_split_by": {"key", "clip"},
    "model.name": {"tiny", "framepainter"},
    "model.tiny.prediction": {"v", "eps"},
    "model.tiny.schedule": {"cosine", "linear"},
    "model.framepainter.init": {"pretrained", "svd_random", "tiny_random"},
    "model.framepainter.trainable": {"all", "attention"},
    "model.framepainter.frozen_dtype": {"auto", "fp32", "bf16", "fp16"},
    "optim.schedule": {"constant", "cosine", "linear"},
    "train.precision": {"auto", "fp32", "bf16", "fp16"},
    "train.device": {"auto", "cpu", "cuda"},
    "eval.lpips_net": {"alex", "vgg"},
}
METRICS = {"psnr", "ssim", "lpips", "clip"}


def _get(cfg, dotted: str):
    node = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def _check(c: TrainerConfig) -> None:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    for key, allowed in CHOICES.items():
        v = _get(c, key)
        need(v in allowed, key, f"{v!r} is not one of {sorted(allowed)}")
    need(c.seed >= 0, "seed", "must be >= 0")
    d = c.data
    need(
        bool(c.train_shards) and all(isinstance(s, str) and s for s in c.train_shards),
        "data.train",
        "must name at least one shard (path, glob, brace list or URL)",
    )
    need(c.eval_shards is None or bool(c.eval_shards), "data.eval", "must be null or name shards")
    need(0 <= d.eval_permille <= 1000, "data.eval_permille", "must be in [0, 1000]")
    need(d.max_eval >= 1, "data.max_eval", "must be >= 1")
    need(d.batch_size >= 1, "data.batch_size", "must be >= 1")
    need(d.num_workers >= 0, "data.num_workers", "must be >= 0")
    need(d.prefetch_factor >= 1, "data.prefetch_factor", "must be >= 1")
    need(d.shuffle_buffer >= 0, "data.shuffle_buffer", "must be >= 0")
    need(d.drag_min_points >= 1, "data.drag_min_points", "must be >= 1")
    need(d.drag_max_points >= d.drag_min_points, "data.drag_max_points", "must be >= data.drag_min_points")
    need(d.drag_sigma_px > 0, "data.drag_sigma_px", "must be > 0")
    need("{url}" in d.s3_command, "data.s3_command", "must contain {url}")
    m = c.model
    need(len(m.resolution) == 2 and all(r >= 8 for r in m.resolution), "model.resolution", "must be [H, W], each >= 8")
    t = m.tiny
    mult = 2 ** (len(t.channel_mults) - 1)
    need(
        all(r % mult == 0 for r in m.resolution) or m.name != "tiny",
        "model.resolution",
        f"must be divisible by {mult} for the tiny model (2 ** (len(channel_mults) - 1))",
    )
    need(t.base_channels >= 8 and t.base_channels % 8 == 0, "model.tiny.base_channels", "must be a multiple of 8, >= 8")
    need(
        bool(t.channel_mults) and all(x >= 1 for x in t.channel_mults),
        "model.tiny.channel_mults",
        "must be a non-empty list of integers >= 1",
    )
    need(t.num_res_blocks >= 1, "model.tiny.num_res_blocks", "must be >= 1")
    need(0.0 <= t.dropout < 1.0, "model.tiny.dropout", "must be in [0, 1)")
    need(t.num_train_timesteps >= 10, "model.tiny.num_train_timesteps", "must be >= 10")
    need(1 <= t.sample_steps <= t.num_train_timesteps, "model.tiny.sample_steps", "must be in [1, num_train_timesteps]")
    f = m.framepainter
    if m.name == "framepainter":
        need(
            all(r % 64 == 0 for r in m.resolution),
            "model.resolution",
            "must be multiples of 64 for framepainter (VAE /8, then the U-Net's 3 downsamplings)",
        )
    need(
        len(f.control_channels) >= 1 and all(ch >= 8 and ch % 8 == 0 for ch in f.control_channels),
        "model.framepainter.control_channels",
        "must be a non-empty list of multiples of 8",
    )
    need(f.control_scale >= 0, "model.framepainter.control_scale", "must be >= 0")
    need(f.match_weight >= 0, "model.framepainter.match_weight", "must be >= 0")
    need(f.match_max_tokens >= 1, "model.framepainter.match_max_tokens", "must be >= 1")
    need(0 <= f.noise_aug_strength <= 1, "model.framepainter.noise_aug_strength", "must be in [0, 1]")
    need(f.p_std > 0, "model.framepainter.p_std", "must be > 0")
    need(0 < f.sigma_min < f.sigma_max, "model.framepainter.sigma_max", "must be > sigma_min > 0")
    need(f.sample_steps >= 1, "model.framepainter.sample_steps", "must be >= 1")
    need(f.clip_size is None or f.clip_size >= 8, "model.framepainter.clip_size", "must be >= 8")
    o = c.optim
    need(o.lr > 0, "optim.lr", "must be > 0")
    need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "must be [b1, b2] in [0, 1)")
    need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
    need(o.eps > 0, "optim.eps", "must be > 0")
    need(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    need(0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", "must be in [0, 1]")
    tr = c.train
    need(tr.max_steps >= 1, "train.max_steps", "must be >= 1")
    need(tr.grad_accum is None or tr.grad_accum >= 1, "train.grad_accum", "must be >= 1")
    need(tr.total_batch_size is None or tr.total_batch_size >= 1, "train.total_batch_size", "must be >= 1")
    need(tr.grad_clip is None or tr.grad_clip > 0, "train.grad_clip", "must be > 0 or null")
    need(tr.ema_decay is None or 0 < tr.ema_decay < 1, "train.ema_decay", "must be in (0, 1) or null")
    need(tr.log_every >= 1, "train.log_every", "must be >= 1")
    need(tr.ckpt_every >= 1, "train.ckpt_every", "must be >= 1")
    need(tr.keep_checkpoints >= 1, "train.keep_checkpoints", "must be >= 1")
    need(tr.eval_every >= 0, "train.eval_every", "must be >= 0")
    need(tr.eval_images >= 1, "train.eval_images", "must be >= 1")
    need(tr.num_threads is None or tr.num_threads >= 1, "train.num_threads", "must be >= 1")
    need(bool(tr.output_dir), "train.output_dir", "must not be empty")
    e = c.eval
    need(all(x in METRICS for x in e.metrics), "eval.metrics", f"entries must be in {sorted(METRICS)}")
    need(e.batch_size >= 1, "eval.batch_size", "must be >= 1")
    need(e.sample_steps is None or e.sample_steps >= 1, "eval.sample_steps", "must be >= 1")
    need(e.save_images >= 0, "eval.save_images", "must be >= 0")


def required_weights(c: TrainerConfig) -> list[str]:
    """Model-registry entries (pipeline/models.py) a trainer config needs from the cache
    (``vid2pair models fetch --preset configs/train_*.yaml`` can use this)."""
    fp = c.model.framepainter
    if c.model.name == "framepainter" and fp.init == "pretrained" and not fp.weights:
        return [fp.base_model]
    return []


def resolve_grad_accum(c: TrainerConfig, world_size: int) -> int:
    """Micro-batches per optimizer step. ``total_batch_size`` (if set) must be reachable exactly."""
    tr, per_step = c.train, c.data.batch_size * world_size
    if tr.total_batch_size is None:
        return tr.grad_accum or 1
    if tr.total_batch_size % per_step:
        raise ConfigError(
            f"train.total_batch_size: {tr.total_batch_size} is not a multiple of "
            f"data.batch_size x world_size = {c.data.batch_size} x {world_size}"
        )
    accum = tr.total_batch_size // per_step
    if tr.grad_accum is not None and tr.grad_accum != accum:
        raise ConfigError(
            f"train.grad_accum: {tr.grad_accum} contradicts train.total_batch_size "
            f"{tr.total_batch_size} = {c.data.batch_size} x {world_size} x {accum}"
        )
    return accum


def train_preset_path(name_or_path) -> Path:
    """A YAML path, or a shipped trainer preset: ``train_tiny_cpu``, ``tiny_cpu`` or ``configs/...``."""
    return preset_path(name_or_path, prefixes=("", "train_"))


def load_train_config(path=None, overrides=(), **extra) -> TrainerConfig:
    """Load a trainer preset (path, or name under configs/), apply ``--set`` overrides, validate."""
    p = None if path is None else train_preset_path(path)
    return train_config_from_dict(load_config_data(p, overrides, extra))


def train_config_from_dict(data: dict) -> TrainerConfig:
    cfg = _build(TrainerConfig, data)
    _check(cfg)
    return cfg
