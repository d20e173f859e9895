"""Typed, validated pipeline configuration.

A config is a tree of dataclasses: the sections the stages declare (each stage module owns its
own, :mod:`vid2pair.core.stage`), plus the I/O and runner sections below. Every knob is declared
with :func:`vid2pair.core.spec.knob` (default, meaning, unit, range). YAML presets (shipped in
``vid2pair/configs``) and ``--set key.sub=value`` overrides are merged onto the defaults, then
validated *before any work starts*: an unknown key, a value of the wrong type or an impossible
range raises :class:`ConfigError` naming the dotted key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Optional

import yaml

from vid2pair.core.errors import ConfigError
from vid2pair.core.spec import UNITS, build, knob, need, section, section_markdown, validate
from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.plan import sections

__all__ = [
    "Config",
    "ConfigError",
    "load_config",
    "config_from_dict",
    "preset_path",
    "available_presets",
    "load_config_data",
    "parse_override",
    "config_markdown",
]


@dataclass
class InputConfig:
    """Which files ``--input`` picks up."""

    extensions: list[str] = knob(
        [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".ogv"],
        "file extensions picked up from directories and globs",
    )
    unit_s: float = knob(
        60.0,
        "a clip at least 1.5 x this long (by its container header) is split into "
        "spans of about this length, each its own work unit: its own Ray task and "
        "shard, retried and resumed on its own. 0: never split. Local files only",
        unit="s",
        ge=0,
    )

    def check(self, prefix: str = "input") -> None:
        need(bool(self.extensions), f"{prefix}.extensions", "must not be empty")


@dataclass
class IsolationConfig:
    """The child process that decoding and the CPU stages before any model stage run in."""

    mode: Literal["process", "none"] = knob(
        "process",
        "process: decode (+ the CPU stages before any model stage) in a child process, a crash loses one clip | none",
    )
    clip_timeout_s: float = knob(
        300.0,
        "limit on the child's silence: each item of a clip (its next pair "
        "or reject) must come within this, else the child is killed (start-up not "
        "counted)",
        unit="s",
        gt=0,
    )


@dataclass
class OutputConfig:
    """What a sample holds, and how shards are cut."""

    image_format: Literal["jpg", "png", "webp"] = knob("jpg", "format of src and tgt")
    jpeg_quality: int = knob(95, "jpg / webp quality of src and tgt", ge=1, le=100)
    flow: Literal["none", "float16", "float32"] = knob("none", "store the flow as flow.npy (none: not stored)")
    clips_per_shard: int = knob(16, "consecutive inputs per chunk = shard = unit of resume", ge=1)
    reject_previews: int = knob(
        36,
        "keep small src | tgt | signal previews (previews/*.jpg) of up to this "
        "many rejected pairs, at most a sixth per stage and reason; the QC report "
        "shows them; 0: none",
        ge=0,
    )
    eval_frac: float = knob(
        0.0,
        "the share of clips whose samples are marked split=eval (meta.json and the index), "
        "drawn per clip from the clip id: no clip feeds both sides; the trainer holds them "
        "out",
        unit="frac",
        ge=0,
        le=1,
    )
    overwrite: bool = knob(False, "discard an existing output built with another config")


@dataclass
class RunnerConfig:
    """How the stages run (never what they produce: not part of the config fingerprint)."""

    name: Literal["ray", "local"] = knob("ray", "ray (Ray Data) | local (in process, debugging)")
    ray_address: Optional[str] = knob(
        None, "join a cluster (auto, host:port, ray://...); null: $RAY_ADDRESS, else a private local Ray"
    )
    num_cpus: Optional[int] = knob(None, "CPUs of the private local Ray (null: all)", ge=1)
    clip_stage_cpus: float = knob(0.75, "Ray: logical CPUs per clip task", gt=0)
    progress: bool = knob(True, "progress bar on stderr")
    threads_per_worker: int = knob(1, "OpenCV / torch CPU threads per worker (parallelism comes from workers)", ge=1)
    check_weights: bool = knob(True, "fail before any work when model weights / extras are missing on the driver")
    shard_writers: Literal["auto", "workers", "driver"] = knob(
        "auto",
        "Ray: who writes the shards. workers: the worker that runs a sample's last stage writes its "
        "members to the output's _staging/, and a Ray task writes each complete chunk's tar, index "
        "and rejects parts; the driver only gets small records and writes the commit markers. driver: "
        "the driver writes everything (the samples' bytes pass through it). auto: workers when the "
        "output is an object store or every Ray node is on the driver's machine, else driver (a "
        "local path on a multi-node cluster is only shared when it is a network file system: say "
        "workers then)",
    )
    wait_for_resources_s: Optional[float] = knob(
        None,
        "Ray: how long to wait for the cluster to offer what the "
        "stages ask for (GPUs, CPUs) before failing; null: 0 for a "
        "private local instance, 300 when joining a cluster (it may "
        "autoscale)",
        unit="s",
        ge=0,
    )


class _ConfigMethods:
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


def _make_config_class():
    fields = [
        ("name", str, knob("custom", "preset name")),
        ("seed", int, knob(0, "global seed: every random draw is keyed by it and stable names", ge=0)),
        ("input", InputConfig, section(InputConfig)),
    ]
    fields += [(name, cls, section(cls)) for name, cls in sections(STAGES).items()]
    fields += [
        ("isolation", IsolationConfig, section(IsolationConfig)),
        ("output", OutputConfig, section(OutputConfig)),
        ("runner", RunnerConfig, section(RunnerConfig)),
    ]
    cls = dataclasses.make_dataclass("Config", fields, bases=(_ConfigMethods,))
    cls.__module__ = __name__  # so a Config pickles (Ray, the isolation child) as vid2pair.pipeline.config.Config
    return cls


#: the whole config tree: the top-level knobs, then one section per declared stage section, then I/O
Config = _make_config_class()


def available_presets(prefix: str = "") -> list[str]:
    """Names of the presets shipped with the package (``vid2pair/configs/*.yaml``)."""
    from importlib.resources import files

    return sorted(
        f.name[:-5]
        for f in files("vid2pair.configs").iterdir()
        if f.name.endswith(".yaml") and f.name.startswith(prefix)
    )


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


def _preset_data(p: Path, seen: tuple = ()) -> dict:
    """A preset's mapping with its ``base:`` chain merged in (the base first, this file on top)."""
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: expected a mapping of config keys")
    base = data.pop("base", None)
    if base is None:
        return data
    if not isinstance(base, str):
        raise ConfigError(f"{p}: base: expected a preset name or path, got {base!r}")
    # a relative base path is next to this preset; a name is a shipped preset
    cand = p.parent / base
    bp = (
        cand
        if cand.is_file()
        else (p.parent / f"{base}.yaml" if (p.parent / f"{base}.yaml").is_file() else preset_path(base))
    )
    if bp.resolve() in seen:
        raise ConfigError(f"{p}: base: {base} makes a cycle ({' -> '.join(str(s) for s in seen)})")
    return _deep_merge(_preset_data(bp, (*seen, p.resolve())), data)


def load_config_data(p: Path | None, overrides: list[str] | tuple = (), extra: dict | None = None) -> dict:
    """The raw mapping of a YAML file ``p`` (or ``{}``) with ``--set`` overrides and ``extra`` merged in.

    Shared by the pipeline's and the trainer's config loaders (each validates the result)."""
    data: dict = {} if p is None else _preset_data(Path(p))
    for item in overrides:
        data = _deep_merge(data, parse_override(item))
    if extra:
        data = _deep_merge(data, extra)
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | tuple = (), **extra: Any) -> Config:
    """Load a preset (path or name under configs/), apply ``--set`` overrides, validate."""
    return config_from_dict(load_config_data(None if path is None else preset_path(path), overrides, extra))


def config_from_dict(data: dict):
    """Build and validate a :data:`Config` from a mapping (errors name the key)."""
    cfg = build(Config, data)
    validate(cfg)
    return cfg


def config_markdown() -> str:
    """The configuration reference (docs/config.md), generated from the knobs' metadata."""
    out = [
        "# Configuration reference",
        "",
        "Every key: its type (choices are separated by `|`), default, unit, allowed range and meaning.",
        "Presets (`vid2pair/configs`, `configs/` in the repository) override these defaults, and",
        "`--set key.sub=value` overrides a preset. Unknown keys, wrong types, choices and ranges are",
        "checked before any work; an error names the key. Generated by",
        "`python -m vid2pair.pipeline.config > docs/config.md` from the stage modules, which declare their",
        "sections, and `pipeline/config.py` (a test keeps it in sync).",
        "",
        "Units:",
        "",
    ]
    out += [f"- `{k}`: {v}" for k, v in UNITS.items()]
    hints = typing.get_type_hints(Config)
    top = [f for f in dataclasses.fields(Config) if not dataclasses.is_dataclass(hints[f.name])]
    out += ["", "## top level", ""]
    rows = section_markdown(Config, "")
    out += rows[:2] + [r for r, f in zip(rows[2:], dataclasses.fields(Config)) if f in top]
    out.append("")
    owners = {name: S for S in STAGES for name in S.sections}
    for f in dataclasses.fields(Config):
        tp = hints[f.name]
        if not dataclasses.is_dataclass(tp):
            continue
        owner = f" (stage `{owners[f.name].name}`, `{tp.__module__}`)" if f.name in owners else ""
        out += [f"## `{f.name}`{owner}", ""]
        doc = (tp.__doc__ or "").strip().splitlines()
        if doc and not doc[0].startswith(tp.__name__ + "("):
            out += [doc[0], ""]
        out += section_markdown(tp, f"{f.name}.")
        out.append("")
    out += _trainer_markdown()
    return "\n".join(out)


def _trainer_markdown() -> list[str]:
    """The trainer's sections (``vid2pair train``, ``configs/train_*.yaml``): the same spec."""
    from vid2pair.trainer.config import TrainerConfig

    out = [
        "# Trainer configuration (`vid2pair train`)",
        "",
        "`configs/train_*.yaml` and `--set` overrides of `vid2pair train` / `vid2pair eval`, checked by the same",
        "validator. Declared in `trainer/config.py`.",
        "",
        "## top level",
        "",
    ]
    hints = typing.get_type_hints(TrainerConfig)
    rows = section_markdown(TrainerConfig, "")
    flat = [not dataclasses.is_dataclass(hints[f.name]) for f in dataclasses.fields(TrainerConfig)]
    out += rows[:2] + [r for r, keep in zip(rows[2:], flat) if keep] + [""]

    def walk(cls, prefix: str) -> None:
        h = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            tp = h[f.name]
            if not dataclasses.is_dataclass(tp):
                continue
            key = f"{prefix}{f.name}"
            out.extend([f"## `{key}`", "", (tp.__doc__ or "").strip().splitlines()[0], ""])
            sub_rows = section_markdown(tp, key + ".")
            sub_flat = [not dataclasses.is_dataclass(typing.get_type_hints(tp)[g.name]) for g in dataclasses.fields(tp)]
            out.extend(sub_rows[:2] + [r for r, keep in zip(sub_rows[2:], sub_flat) if keep] + [""])
            walk(tp, key + ".")

    walk(TrainerConfig, "")
    return out


if __name__ == "__main__":
    print(config_markdown())
