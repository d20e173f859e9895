"""Typed, validated pipeline configuration.

A config is a tree of dataclasses. YAML presets (``configs/*.yaml``) and ``--set key.sub=value``
overrides are merged onto the defaults, then validated *before any work starts*: an unknown key, a
value of the wrong type or an impossible range raises :class:`ConfigError` naming the dotted key.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

# signal stages own their config sections (each with a validate(prefix) method)
from vid2pair.stages.coarse import CoarseConfig
from vid2pair.stages.collage import CollageConfig
from vid2pair.stages.drag import DragConfig
from vid2pair.stages.region_drag import RegionDragConfig
from vid2pair.stages.sketch import SketchConfig
from vid2pair.stages.track import TrackConfig


class ConfigError(ValueError):
    """A config value is unknown, of the wrong type or out of range. The message names the key."""


@dataclass
class InputConfig:
    # file extensions picked up from directories and globs
    extensions: list[str] = field(
        default_factory=lambda: [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"])


@dataclass
class ProbeConfig:
    min_width: int = 64  # narrower videos are rejected (too_small)
    min_height: int = 64  # lower videos are rejected (too_small)
    min_duration_s: Optional[float] = None  # None: derived from the pair policy's smallest gap


@dataclass
class ShotsConfig:
    detector: str = "content"  # content | adaptive | none
    threshold: float = 27.0  # scenedetect ContentDetector threshold
    min_shot_s: float = 1.0  # shorter shots are rejected (stage "shots")
    analysis_width: int = 128  # frames are decoded this wide for cut detection
    trim_s: float = 0.1  # seconds dropped at both ends of each shot (fades, cut blur)


@dataclass
class StaticCameraConfig:
    enabled: bool = True  # false: every shot counts as static
    samples: int = 8  # frames sampled across the shot
    analysis_width: int = 320  # frames are decoded this wide for the camera-motion fit
    max_shift: float = 0.008  # camera score threshold, fraction of the frame diagonal (docs/calibration.md)
    min_inliers: int = 12  # fewer RANSAC inliers: camera_motion_unknown


@dataclass
class PairsConfig:
    policy: str = "min_gap"  # min_gap | uniform_seconds | flow_advance
    per_shot: int = 4  # pairs drawn per static shot
    min_gap_s: float = 1.0  # min_gap: dt >= min_gap_s
    max_gap_s: Optional[float] = None  # min_gap: dt <= max_gap_s (None: up to the shot length)
    uniform_min_s: int = 1  # uniform_seconds: dt drawn uniformly from the integers min..max
    uniform_max_s: int = 10  # uniform_seconds: largest dt in seconds
    reverse_prob: float = 0.0  # probability of swapping source and target (time reversal)
    max_attempts: int = 20  # draws per requested pair before giving up
    # flow_advance (Magic Fixup released code)
    advance_step_s: float = 1.0  # flow_advance: seconds between candidate targets
    advance_max_steps: int = 10  # flow_advance: candidate targets after the start
    advance_max_p90: float = 300.0  # flow_advance: advance while the flow p90 stays <= this (px)
    advance_first_min_p90: float = 1.0  # flow_advance: drop when p90 < this at the first step
    advance_step5_min_p95: float = 20.0  # flow_advance: drop when p95 < this at step 5
    advance_final_min_p95: float = 50.0  # flow_advance: drop when p95 < this at the step before the target


@dataclass
class FrameConfig:
    """Resize/crop policy applied to decoded frames before flow and storage."""
    mode: str = "resize"  # none | resize | short_side_crop
    size: Optional[list[int]] = None  # [H, W] for resize (cover + centre crop) and short_side_crop
    short_side: Optional[int] = None  # short_side_crop: resize the short side to this, then centre-crop `size`
    max_decode_side: int = 4096  # larger videos are decoded at reduced size (bounded memory)


@dataclass
class IsolationConfig:
    mode: str = "process"  # process: decode (+ the CPU stages before any model stage) in a child process | none
    clip_timeout_s: float = 300.0  # per-clip limit for decode + the CPU stages run with it in the child; then killed


@dataclass
class FlowConfig:
    backend: str = "dis"  # dis | raft_small | raft_large | sea_raft_s | sea_raft_m | sea_raft_l
    dis_preset: str = "medium"  # ultrafast | fast | medium
    weights: Optional[str] = None  # explicit local checkpoint; default: the model cache
    device: str = "auto"  # auto | cpu | cuda
    precision: str = "fp32"  # fp32 | fp16 | bf16 (half precision only on CUDA)
    batch_size: int = 4  # pairs per flow-model call
    iters: Optional[int] = None  # RAFT refinement iterations (None: the model's default)
    inference_size: Optional[list[int]] = None  # [H, W] the model runs at; flow is rescaled back
    bidirectional: bool = False  # also compute tgt->src flow (flow_bwd.npy; better sketches)
    chain: bool = False  # chain flow over intermediate frames
    chain_max_steps: int = 8  # hops between source and target when chaining
    num_gpus: float = 0.0  # per flow actor in the Ray runner
    num_cpus: float = 0.25  # logical CPUs per flow actor (it shares cores with the clip workers)
    actors: int = 1  # flow actor-pool size in the Ray runner


@dataclass
class MotionConfig:
    reference_short_side: int = 512  # pixel thresholds below are for this short side; scaled to the frame
    min_p50: Optional[float] = None  # too small: median flow magnitude below this (px)
    min_p90: Optional[float] = 1.0  # too small: p90 of the flow magnitude below this (px)
    min_moving_frac: Optional[float] = 0.002  # fraction of pixels moving more than moving_px
    moving_px: float = 1.0  # a pixel "moves" above this magnitude (px)
    max_p99: Optional[float] = None  # too large: p99 of the flow magnitude above this (px)
    large_px: float = 350.0  # "large motion" threshold
    max_large_frac: Optional[float] = 0.1  # reject when >= this fraction moves >= large_px


@dataclass
class OutputConfig:
    image_format: str = "jpg"  # jpg | png | webp
    jpeg_quality: int = 95  # jpg / webp quality of src and tgt
    flow: str = "none"  # none | float16 | float32  (stored as flow.npy)
    clips_per_shard: int = 16  # consecutive inputs per chunk = shard = unit of resume
    overwrite: bool = False  # discard an existing output built with another config


@dataclass
class RunnerConfig:
    name: str = "ray"  # ray | local
    ray_address: Optional[str] = None  # join a cluster (auto, host:port, ray://...); None: $RAY_ADDRESS, else a private local Ray
    num_cpus: Optional[int] = None  # local Ray only
    clip_stage_cpus: float = 0.75  # Ray: logical CPUs per clip-stage actor
    pair_stage_cpus: float = 0.75  # Ray: logical CPUs per task of the CPU pair stages (track, signals, encode)
    progress: bool = True  # progress bars on stderr
    threads_per_worker: int = 1  # OpenCV / torch CPU threads per worker (parallelism comes from workers)
    check_weights: bool = True  # fail before any work when model weights / extras are missing on the driver


@dataclass
class Config:
    name: str = "custom"
    seed: int = 0
    input: InputConfig = field(default_factory=InputConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    shots: ShotsConfig = field(default_factory=ShotsConfig)
    static_camera: StaticCameraConfig = field(default_factory=StaticCameraConfig)
    pairs: PairsConfig = field(default_factory=PairsConfig)
    frame: FrameConfig = field(default_factory=FrameConfig)
    isolation: IsolationConfig = field(default_factory=IsolationConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    motion: MotionConfig = field(default_factory=MotionConfig)
    track: TrackConfig = field(default_factory=TrackConfig)
    drag: DragConfig = field(default_factory=DragConfig)
    sketch: SketchConfig = field(default_factory=SketchConfig)
    coarse: CoarseConfig = field(default_factory=CoarseConfig)
    collage: CollageConfig = field(default_factory=CollageConfig)
    region_drag: RegionDragConfig = field(default_factory=RegionDragConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def fingerprint(self, exclude=("runner", "output.overwrite", "isolation")) -> str:
        """Hash of everything that changes the produced samples (not how they are run)."""
        d = self.to_dict()
        for k in exclude:
            parts = k.split(".")
            node = d
            for p in parts[:-1]:
                node = node[p]
            node.pop(parts[-1], None)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


CHOICES = {
    "shots.detector": {"content", "adaptive", "none"},
    "pairs.policy": {"min_gap", "uniform_seconds", "flow_advance"},
    "frame.mode": {"none", "resize", "short_side_crop"},
    "flow.backend": {"dis", "raft_small", "raft_large", "sea_raft_s", "sea_raft_m", "sea_raft_l"},
    "flow.dis_preset": {"ultrafast", "fast", "medium"},
    "flow.device": {"auto", "cpu", "cuda"},
    "flow.precision": {"fp32", "fp16", "bf16"},
    "output.image_format": {"jpg", "png", "webp"},
    "output.flow": {"none", "float16", "float32"},
    "runner.name": {"ray", "local"},
    "isolation.mode": {"process", "none"},
}


def _check_ranges(c: Config) -> None:
    def need(ok: bool, key: str, msg: str):
        if not ok:
            raise ConfigError(f"{key}: {msg}")

    for key, allowed in CHOICES.items():
        sec, name = key.split(".")
        v = getattr(getattr(c, sec), name)
        need(v in allowed, key, f"{v!r} is not one of {sorted(allowed)}")
    need(c.seed >= 0, "seed", "must be >= 0")
    need(bool(c.input.extensions), "input.extensions", "must not be empty")
    need(c.probe.min_width > 0 and c.probe.min_height > 0, "probe.min_width", "must be > 0")
    need(c.shots.threshold > 0, "shots.threshold", "must be > 0")
    need(c.shots.min_shot_s > 0, "shots.min_shot_s", "must be > 0")
    need(c.shots.analysis_width >= 16, "shots.analysis_width", "must be >= 16")
    need(c.shots.trim_s >= 0, "shots.trim_s", "must be >= 0")
    need(c.static_camera.samples >= 2, "static_camera.samples", "must be >= 2")
    need(c.static_camera.max_shift > 0, "static_camera.max_shift", "must be > 0")
    need(c.static_camera.min_inliers >= 3, "static_camera.min_inliers", "must be >= 3 (a similarity needs 2 points)")
    need(c.static_camera.analysis_width >= 32, "static_camera.analysis_width", "must be >= 32")
    need(c.probe.min_duration_s is None or c.probe.min_duration_s > 0, "probe.min_duration_s", "must be > 0 or null")
    p = c.pairs
    need(p.per_shot >= 1, "pairs.per_shot", "must be >= 1")
    need(p.min_gap_s > 0, "pairs.min_gap_s", "must be > 0")
    need(p.max_gap_s is None or p.max_gap_s >= p.min_gap_s, "pairs.max_gap_s",
         f"must be >= pairs.min_gap_s ({p.min_gap_s})")
    need(p.uniform_min_s >= 1, "pairs.uniform_min_s", "must be >= 1")
    need(p.uniform_max_s >= p.uniform_min_s, "pairs.uniform_max_s",
         f"must be >= pairs.uniform_min_s ({p.uniform_min_s})")
    need(0.0 <= p.reverse_prob <= 1.0, "pairs.reverse_prob", "must be in [0, 1]")
    need(p.max_attempts >= 1, "pairs.max_attempts", "must be >= 1")
    need(p.advance_step_s > 0, "pairs.advance_step_s", "must be > 0")
    need(p.advance_max_steps >= 1, "pairs.advance_max_steps", "must be >= 1")
    for k in ("advance_max_p90", "advance_first_min_p90", "advance_step5_min_p95", "advance_final_min_p95"):
        need(getattr(p, k) >= 0, f"pairs.{k}", "must be >= 0")
    f = c.frame
    if f.size is not None:
        need(len(f.size) == 2 and all(int(s) >= 16 for s in f.size), "frame.size", "must be [H, W], each >= 16")
    need(f.mode == "none" or f.size is not None, "frame.size", f"is required when frame.mode is {f.mode!r}")
    need(f.mode != "short_side_crop" or (f.short_side or 0) >= max(f.size or [0]), "frame.short_side",
         "must be set and >= max(frame.size) for short_side_crop")
    need(f.max_decode_side >= 64, "frame.max_decode_side", "must be >= 64")
    need(c.isolation.clip_timeout_s > 0, "isolation.clip_timeout_s", "must be > 0")
    fl = c.flow
    need(fl.batch_size >= 1, "flow.batch_size", "must be >= 1")
    need(fl.iters is None or fl.iters >= 1, "flow.iters", "must be >= 1")
    if fl.inference_size is not None:
        need(len(fl.inference_size) == 2 and all(s >= 32 and s % 8 == 0 for s in fl.inference_size),
             "flow.inference_size", "must be [H, W], multiples of 8, >= 32")
    need(fl.chain_max_steps >= 1, "flow.chain_max_steps", "must be >= 1")
    need(fl.num_gpus >= 0, "flow.num_gpus", "must be >= 0")
    need(fl.actors >= 1, "flow.actors", "must be >= 1")
    need(fl.num_cpus > 0, "flow.num_cpus", "must be > 0")
    need(c.runner.threads_per_worker >= 1, "runner.threads_per_worker", "must be >= 1")
    need(c.runner.clip_stage_cpus > 0, "runner.clip_stage_cpus", "must be > 0")
    need(c.runner.pair_stage_cpus > 0, "runner.pair_stage_cpus", "must be > 0")
    m = c.motion
    need(m.reference_short_side > 0, "motion.reference_short_side", "must be > 0")
    need(m.moving_px >= 0, "motion.moving_px", "must be >= 0")
    need(m.large_px > 0, "motion.large_px", "must be > 0")
    for k in ("min_p50", "min_p90", "max_p99", "min_moving_frac", "max_large_frac"):
        v = getattr(m, k)
        need(v is None or v >= 0, f"motion.{k}", "must be >= 0 or null")
    for k in ("min_moving_frac", "max_large_frac"):
        v = getattr(m, k)
        need(v is None or v <= 1, f"motion.{k}", "must be <= 1")
    if m.min_p90 is not None and m.max_p99 is not None:
        need(m.max_p99 > m.min_p90, "motion.max_p99", "must be > motion.min_p90")
    for f in dataclasses.fields(c):  # sections defined by their stage modules validate themselves
        section = getattr(c, f.name)
        if hasattr(section, "validate"):
            section.validate(f.name)
    o = c.output
    need(1 <= o.jpeg_quality <= 100, "output.jpeg_quality", "must be in [1, 100]")
    need(o.clips_per_shard >= 1, "output.clips_per_shard", "must be >= 1")
    need(c.runner.num_cpus is None or c.runner.num_cpus >= 1, "runner.num_cpus", "must be >= 1")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against the annotation `tp`; allow int->float. Raise ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {type(value).__name__} {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls, data: dict, prefix: str = ""):
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(f"{key}: unknown config key (known keys under "
                          f"'{prefix.rstrip('.') or '<top>'}': {', '.join(sorted(fields))})")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = _coerce(value, tp, prefix + name)
    return cls(**kwargs)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(item: str) -> dict:
    """``a.b.c=value`` -> {"a": {"b": {"c": value}}}; the value is parsed as YAML (so 3, 0.5, true, [1,2], null)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected key.sub=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"--set {item!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise ConfigError(f"{key}: cannot parse value {raw!r}: {e}") from None
    node: Any = value
    for part in reversed(key.split(".")):
        node = {part: node}
    return node


def available_presets(prefix: str = "") -> list[str]:
    """Names of the presets shipped with the package (``vid2pair/configs/*.yaml``)."""
    from importlib.resources import files

    return sorted(f.name[:-5] for f in files("vid2pair.configs").iterdir()
                  if f.name.endswith(".yaml") and f.name.startswith(prefix))


def preset_path(name_or_path: str | Path, prefixes: tuple[str, ...] = ("",)) -> Path:
    """A YAML path that exists, else a shipped preset by name (``demo``, ``demo.yaml`` or
    ``configs/demo.yaml``, tried with each of ``prefixes``), from any working directory."""
    from importlib.resources import files

    p = Path(name_or_path).expanduser()
    if p.is_file():
        return p
    if str(p.parent) in (".", "configs"):
        name = p.name[:-5] if p.name.endswith(".yaml") else p.name
        for pre in prefixes:
            cand = files("vid2pair.configs") / f"{pre}{name}.yaml"
            if cand.is_file():
                return Path(str(cand))
    known = ", ".join(available_presets()) or "none"
    raise ConfigError(f"config file not found: {name_or_path} (a YAML path, or a preset: {known})")


def load_config_data(p: Path | None, overrides: list[str] | tuple = (), extra: dict | None = None) -> dict:
    """The raw mapping of a YAML file ``p`` (or ``{}``) with ``--set`` overrides and ``extra`` merged in.

    Shared by the pipeline's and the trainer's config loaders (each validates the result)."""
    data: dict = {}
    if p is not None:
        try:
            data = yaml.safe_load(Path(p).read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: invalid YAML: {e}") from None
    for item in overrides:
        data = _deep_merge(data, parse_override(item))
    if extra:
        data = _deep_merge(data, extra)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), **extra: Any) -> Config:
    """Load a preset (path or name under configs/), apply ``--set`` overrides, validate."""
    return config_from_dict(load_config_data(None if path is None else preset_path(path), overrides, extra))


def config_markdown() -> str:
    """The configuration reference (docs/config.md), generated from the dataclasses and their comments."""
    import inspect
    import re

    out = ["# Configuration reference", "",
           "Every key, its default and meaning. Presets in `configs/` override these defaults, and",
           "`--set key.sub=value` overrides a preset. Unknown keys, wrong types and impossible ranges are",
           "errors naming the key. Generated by `python -m vid2pair.pipeline.config > docs/config.md` from",
           "`pipeline/config.py` and the stage modules that own a section (a test keeps it in sync).", ""]
    hints = typing.get_type_hints(Config)
    top = [f for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(hints[f.name])]
    out += ["## top level", "", "| key | default | meaning |", "|---|---|---|"]
    out += [f"| `{f.name}` | `{f.default!r}` | {'preset name' if f.name == 'name' else 'global seed'} |" for f in top]
    out.append("")
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            continue
        src = inspect.getsource(tp)
        doc = (tp.__doc__ or "").strip().splitlines()
        out += [f"## `{f.name}`" + (f" (from `{tp.__module__}`)" if tp.__module__ != __name__ else ""), ""]
        if doc and not doc[0].startswith(tp.__name__ + "("):
            out += [doc[0], ""]
        out += ["| key | default | meaning |", "|---|---|---|"]
        lines = src.splitlines()
        for g in dataclasses.fields(tp):
            d = g.default if g.default is not dataclasses.MISSING else g.default_factory()
            note = ""
            for k, line in enumerate(lines):
                if re.match(rf"\s+{g.name}\s*:", line):
                    m = re.search(r"#\s*(.*)$", line)
                    if m:
                        note = m.group(1)
                    else:  # a comment block right above the field
                        above = []
                        j = k - 1
                        while j >= 0 and lines[j].strip().startswith("#"):
                            above.insert(0, lines[j].strip().lstrip("#").strip())
                            j -= 1
                        note = " ".join(above)
                    break
            out.append(f"| `{f.name}.{g.name}` | `{d!r}` | {note.replace('|', '/')} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(config_markdown())


def config_from_dict(data: dict) -> Config:
    cfg = _build(Config, data)
    _check_ranges(cfg)
    return cfg
