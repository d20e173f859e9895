"""Typed, validated trainer configuration (``configs/train_*.yaml``).

The same typed spec as the pipeline config (:mod:`vid2pair.core.spec`): every field is a
:func:`~vid2pair.core.spec.knob` with its meaning and range, choices are ``Literal`` types, rules
that tie fields together are each section's ``check``; a YAML preset and ``--set key.sub=value``
overrides are merged onto the defaults and checked by the same generic validator before anything
is built. An unknown key, a wrong type or an impossible range raises
:class:`pipeline.config.ConfigError` naming the dotted key. The reference is in docs/config.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional, Union

from vid2pair.core.spec import build as _build
from vid2pair.core.spec import knob, need, section, validate
from vid2pair.pipeline.config import ConfigError, load_config_data, preset_path

__all__ = [
    "TrainerConfig",
    "load_train_config",
    "train_config_from_dict",
    "ConfigError",
    "trainer_tasks",
    "signal_channels",
    "task_input",
    "required_weights",
    "resolve_grad_accum",
]


def trainer_tasks() -> tuple[str, ...]:
    """The tasks: the signals whose stage declares a trainer input
    (:attr:`vid2pair.core.stage.Signal.train`), in pipeline order."""
    from vid2pair.pipeline.plan import trainer_tasks as tasks

    return tuple(tasks())


def signal_channels(task: str) -> int:
    """Channels of the conditioning image the data loader produces for ``task`` (its signal's
    :attr:`~vid2pair.core.stage.TrainInput.channels`: sketch 1, strokes 0/1; coarse / collage 4, RGB
    in [-1, 1] + hole mask 0/1; drag 3, handle blobs, target blobs, source->target segments)."""
    return task_input(task).channels


def task_input(task: str):
    """The :class:`~vid2pair.core.stage.TrainInput` of ``task``'s signal."""
    from vid2pair.pipeline.plan import trainer_task

    return trainer_task(task).train


def __getattr__(name: str):
    if name == "TASKS":  # the tasks of the stage list as it is now
        return trainer_tasks()
    raise AttributeError(name)


@dataclass
class DataConfig:
    """The shards the trainer reads, the eval split and the data loader."""

    train: Union[str, list[str]] = knob(
        [],
        "training shards: local paths, globs ('/d/shards/*.tar'), brace lists ('pairs-{000000..000099}.tar'), a "
        "vid2pair output directory (its shards/), 'pipe:CMD' and object-store URLs (s3://, gs://, http(s)://)",
    )
    eval: Optional[Union[str, list[str]]] = knob(None, "eval shards (as train); null: the eval split of train")
    eval_permille: int = knob(
        50, "sha1(key or clip) mod 1000 below this: the eval split (never trained on); 0: no split", ge=0, le=1000
    )
    eval_split_by: Literal["key", "clip"] = knob(
        "key", "key: held out per pair; clip: whole clips held out (no clip in both splits)"
    )
    max_eval: int = knob(200, "held-out pairs evaluated (FramePainter evaluates on 200)", ge=1)
    batch_size: int = knob(1, "pairs per batch, per process", ge=1)
    num_workers: int = knob(2, "DataLoader workers per process", ge=0)
    prefetch_factor: int = knob(2, "batches each worker loads ahead", ge=1)
    shuffle_buffer: int = knob(256, "samples (raw, before decoding) shuffled together", ge=0)
    shuffle_shards: bool = knob(True, "shuffle the shard order each epoch")
    resampled: bool = knob(False, "sample shards with replacement forever (wds.ResampledShards): multi-node")
    on_error: Literal["raise", "skip"] = knob(
        "raise", "a sample or shard that cannot be read: raise, or skip it (counted and logged)"
    )
    drag_min_points: int = knob(1, "drag task: fewest points drawn per training sample (uniform in [min, max])", ge=1)
    drag_max_points: int = knob(
        16, "drag task: most points drawn per sample; also the padded length of the point tensor", ge=1
    )
    drag_sigma_px: float = knob(1.5, "drag raster: blob sigma at the model resolution", gt=0)
    s3_command: str = knob("aws s3 cp {url} -", "how s3:// URLs are streamed (pipe:); must contain {url}")

    def check(self, prefix: str = "data") -> None:
        shards = _as_list(self.train)
        need(
            bool(shards) and all(isinstance(s, str) and s for s in shards),
            f"{prefix}.train",
            "must name at least one shard (path, glob, brace list or URL)",
        )
        need(self.eval is None or bool(_as_list(self.eval)), f"{prefix}.eval", "must be null or name shards")
        need(
            self.drag_max_points >= self.drag_min_points, f"{prefix}.drag_max_points", "must be >= data.drag_min_points"
        )
        need("{url}" in self.s3_command, f"{prefix}.s3_command", "must contain {url}")


@dataclass
class TinyModelConfig:
    """The tiny conditional U-Net (a diffusion model small enough for a CPU: tests, smoke runs)."""

    base_channels: int = knob(32, "channels of the first level; a multiple of 8", ge=8)
    channel_mults: list[int] = knob(
        [1, 2, 2], "channel multiplier per level (one downsampling between levels)", items_ge=1
    )
    num_res_blocks: int = knob(1, "residual blocks per level", ge=1)
    attention: bool = knob(True, "self-attention at the lowest resolution")
    dropout: float = knob(0.0, "dropout in the residual blocks", ge=0, lt=1)
    prediction: Literal["v", "eps"] = knob("v", "what the network predicts")
    residual: bool = knob(
        False, "diffuse (target - source) / 2 instead of the target (measured worse on the demo data)"
    )
    schedule: Literal["cosine", "linear"] = knob("cosine", "noise schedule")
    num_train_timesteps: int = knob(1000, "diffusion timesteps in training", ge=10)
    sample_steps: int = knob(25, "DDIM steps for eval predictions; at most num_train_timesteps", ge=1)

    def check(self, prefix: str = "model.tiny") -> None:
        need(self.base_channels % 8 == 0, f"{prefix}.base_channels", "must be a multiple of 8, >= 8")
        need(bool(self.channel_mults), f"{prefix}.channel_mults", "must be a non-empty list of integers >= 1")
        need(
            self.sample_steps <= self.num_train_timesteps,
            f"{prefix}.sample_steps",
            "must be in [1, num_train_timesteps]",
        )


@dataclass
class FramePainterConfig:
    """FramePainter: Stable Video Diffusion fine-tuned on (source, signal) -> target, with matching attention."""

    init: Literal["pretrained", "svd_random", "tiny_random"] = knob(
        "pretrained",
        "pretrained: SVD weights from a local dir; svd_random: SVD architecture, random weights "
        "(throughput / memory runs without the gated weights); tiny_random: a tiny random config "
        "(tests, smoke runs)",
    )
    base_model: str = knob("svd_xt_1_1", "registry entry (pipeline/models.py), resolved from the model cache")
    weights: Optional[str] = knob(None, "explicit local diffusers directory of SVD (wins over the cache)")
    variant: Optional[str] = knob("fp16", "safetensors variant in the directory (null: plain files)")
    trainable: Literal["all", "attention"] = knob(
        "all", "all: U-Net + control encoder; attention: attention layers + encoder + matching"
    )
    frozen_dtype: Literal["auto", "fp32", "bf16", "fp16"] = knob(
        "auto", "VAE / CLIP dtype: auto is bf16 on GPU, fp32 on CPU"
    )
    gradient_checkpointing: bool = knob(True, "recompute activations in the backward pass (memory for time)")
    control_channels: list[int] = knob(
        [64, 128, 256], "channels of the control encoder's levels; multiples of 8", items_ge=8
    )
    control_scale: float = knob(0.2, "scale of the control features added to the U-Net", ge=0)
    matching: bool = knob(True, "matching attention branch beside every spatial self-attention")
    match_weight: float = knob(1.0, "L = L_diff + match_weight * L_match", ge=0)
    match_max_tokens: int = knob(
        4096, "supervise matching attention at token grids with at most this many tokens", ge=1
    )
    drag_injection: bool = knob(True, "drag task: copy source-point tokens onto target-point tokens")
    noise_aug_strength: float = knob(0.02, "noise added to the conditioning frame (SVD)", ge=0, le=1)
    fps_id: int = knob(6, "SVD's fps conditioning")
    motion_bucket_id: int = knob(128, "SVD's motion-bucket conditioning")
    p_mean: float = knob(0.7, "training noise: log(sigma) ~ N(p_mean, p_std^2) (EDM)")
    p_std: float = knob(1.6, "training noise: the std of log(sigma)", gt=0)
    sigma_min: float = knob(0.002, "sampler (Karras schedule, Euler): smallest sigma", gt=0)
    sigma_max: float = knob(700.0, "sampler: largest sigma; above sigma_min", gt=0)
    sample_steps: int = knob(25, "sampler steps", ge=1)
    clip_size: Optional[int] = knob(None, "CLIP input size (null: the image encoder's config)", ge=8)

    def check(self, prefix: str = "model.framepainter") -> None:
        need(
            bool(self.control_channels) and all(ch % 8 == 0 for ch in self.control_channels),
            f"{prefix}.control_channels",
            "must be a non-empty list of multiples of 8",
        )
        need(self.sigma_min < self.sigma_max, f"{prefix}.sigma_max", "must be > sigma_min > 0")


@dataclass
class ModelConfig:
    """The model trained."""

    name: Literal["tiny", "framepainter"] = knob("tiny", "tiny (a small U-Net) or framepainter (SVD)")
    resolution: list[int] = knob([64, 96], "[H, W] the model trains at", items_ge=8)
    tiny: TinyModelConfig = section(TinyModelConfig)
    framepainter: FramePainterConfig = section(FramePainterConfig)

    def check(self, prefix: str = "model") -> None:
        need(len(self.resolution) == 2, f"{prefix}.resolution", "must be [H, W], each >= 8")
        mult = 2 ** (len(self.tiny.channel_mults) - 1)
        need(
            all(r % mult == 0 for r in self.resolution) or self.name != "tiny",
            f"{prefix}.resolution",
            f"must be divisible by {mult} for the tiny model (2 ** (len(channel_mults) - 1))",
        )
        if self.name == "framepainter":
            need(
                all(r % 64 == 0 for r in self.resolution),
                f"{prefix}.resolution",
                "must be multiples of 64 for framepainter (VAE /8, then the U-Net's 3 downsamplings)",
            )


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule."""

    lr: float = knob(1e-4, "peak learning rate", gt=0)
    betas: list[float] = knob([0.9, 0.999], "AdamW betas [b1, b2], each in [0, 1)")
    weight_decay: float = knob(0.01, "AdamW weight decay", ge=0)
    eps: float = knob(1e-8, "AdamW epsilon", gt=0)
    schedule: Literal["constant", "cosine", "linear"] = knob("constant", "the schedule after the warmup")
    warmup_steps: int = knob(0, "linear warmup steps", ge=0)
    min_lr_ratio: float = knob(0.0, "cosine / linear end at lr * this", ge=0, le=1)

    def check(self, prefix: str = "optim") -> None:
        need(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            f"{prefix}.betas",
            "must be [b1, b2] in [0, 1)",
        )


@dataclass
class TrainLoopConfig:
    """The training loop: steps, batch, precision, logging, eval images and checkpoints."""

    output_dir: str = knob("runs/{name}", "where checkpoints, logs and samples go; {name} is the config name")
    max_steps: int = knob(1000, "optimizer steps", ge=1)
    grad_accum: Optional[int] = knob(None, "micro-batches per step; null: from total_batch_size (else 1)", ge=1)
    total_batch_size: Optional[int] = knob(
        None, "batch_size x world_size x grad_accum must equal this; null: not fixed", ge=1
    )
    grad_clip: Optional[float] = knob(1.0, "max global gradient norm; null: no clipping", gt=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = knob("auto", "auto: bf16 autocast on GPU, fp32 on CPU")
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "where the model trains")
    ema_decay: Optional[float] = knob(0.999, "EMA of the trained weights; null: no EMA", gt=0, lt=1)
    log_every: int = knob(10, "steps between log lines (metrics.jsonl, TensorBoard)", ge=1)
    ckpt_every: int = knob(1000, "steps between checkpoints", ge=1)
    keep_checkpoints: int = knob(3, "checkpoints kept (the oldest are deleted)", ge=1)
    eval_every: int = knob(500, "steps between eval images + PSNR/SSIM on a fixed eval batch (rank 0); 0: never", ge=0)
    eval_images: int = knob(4, "pairs in that eval batch", ge=1)
    num_threads: Optional[int] = knob(None, "torch CPU threads per process (null: torch's default)", ge=1)
    deterministic: bool = knob(False, "torch.use_deterministic_algorithms (CPU runs are deterministic anyway)")
    compile: bool = knob(False, "torch.compile the model (GPU)")

    def check(self, prefix: str = "train") -> None:
        need(bool(self.output_dir), f"{prefix}.output_dir", "must not be empty")


@dataclass
class EvalConfig:
    """`vid2pair eval`: the metrics on the held-out pairs."""

    metrics: list[str] = knob(["psnr", "ssim", "lpips", "clip"], "metrics computed: psnr, ssim, lpips, clip")
    batch_size: int = knob(4, "pairs per eval batch", ge=1)
    use_ema: bool = knob(True, "predict with the EMA weights")
    sample_steps: Optional[int] = knob(None, "sampler steps (null: the model's default)", ge=1)
    lpips_net: Literal["alex", "vgg"] = knob(
        "alex", "LPIPS backbone (needs the lpips package and torchvision backbone weights cached)"
    )
    clip_weights: Optional[str] = knob(None, "local transformers CLIP vision dir for the CLIP-I score")
    save_images: int = knob(8, "prediction grids written by vid2pair eval", ge=0)

    def check(self, prefix: str = "eval") -> None:
        need(all(x in METRICS for x in self.metrics), f"{prefix}.metrics", f"entries must be in {sorted(METRICS)}")


@dataclass
class TrainerConfig:
    """A training run (``vid2pair train``): the task, the data, the model, the optimizer, the loop."""

    name: str = knob("custom", "the run's name ({name} in train.output_dir)")
    seed: int = knob(0, "model init and noise draws (per rank: seed + 1000 x rank)", ge=0)
    task: str = knob(
        "sketch",
        "the signal the model is conditioned on: one whose stage declares a trainer input "
        f"({', '.join(trainer_tasks())})",
    )
    data: DataConfig = section(DataConfig)
    model: ModelConfig = section(ModelConfig)
    optim: OptimConfig = section(OptimConfig)
    train: TrainLoopConfig = section(TrainLoopConfig)
    eval: EvalConfig = section(EvalConfig)

    def check(self, prefix: str = "") -> None:
        tasks = trainer_tasks()
        need(self.task in tasks, "task", f"{self.task!r} is not one of {list(tasks)}")

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


METRICS = {"psnr", "ssim", "lpips", "clip"}


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
    validate(cfg)  # the generic validator: choices, ranges, then each section's check()
    return cfg
