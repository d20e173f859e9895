"""The typed config spec: every knob is a dataclass field made with :func:`knob`.

A knob carries its default, its meaning, its unit and its range. Choices are ``Literal`` types.
One generic validator (:func:`validate`) checks types (:func:`build`), choices and ranges of any
section, then calls the section's ``check(prefix)`` for rules that tie fields together; the same
metadata generates ``docs/config.md`` (:func:`section_markdown`). A stage module declares its
section next to its pure core; nothing else holds a copy of a default.

Units (the ``unit`` column of docs/config.md):
"""

from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from dataclasses import MISSING, field
from typing import Any, Literal, Union

from vid2pair.core.errors import ConfigError

#: every unit a knob may name, and what it means
UNITS: dict[str, str] = {
    "px": "pixels of the stored frames (after the frame policy)",
    "px@512": "pixels at a 512-px short side; scaled by (stored short side / 512) for other frame sizes "
    "(vid2pair.core.spec.scaled)",
    "px@240": "pixels at a 240-px short side; scaled by (stored short side / 240) for other frame sizes "
    "(vid2pair.core.spec.scaled)",
    "px@dis": "pixels at DIS's working resolution of the tracker's hops: stored px / 2**finest_scale "
    "(1/2 at 576x1024, docs/tracking.md)",
    "px@analysis": "pixels of the small frames the stage analyses (its `analysis_width`)",
    "s": "seconds of video time",
    "frac": "a fraction (0..1)",
    "frac_diag": "a fraction of the frame diagonal",
    "dB": "decibels (PSNR)",
    "grey": "grey levels (0..255)",
    "frames": "video frames",
    "deg": "degrees",
}
__doc__ += "\n".join(f"* ``{k}``: {v}" for k, v in UNITS.items()) + "\n"

_RANGE_KEYS = ("ge", "gt", "le", "lt")


def knob(
    default: Any,
    doc: str,
    *,
    unit: str | None = None,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    items_ge: float | None = None,
):
    """A config field: ``default``, its meaning ``doc``, a ``unit`` from :data:`UNITS`, an inclusive
    (``ge`` / ``le``) or exclusive (``gt`` / ``lt``) range, ``items_ge`` for every item of a list.
    ``None`` values are never range-checked (``Optional`` knobs use ``null`` for "off")."""
    if unit is not None and unit not in UNITS:
        raise ValueError(f"unknown unit {unit!r}; known: {sorted(UNITS)}")
    md = {"doc": doc, "unit": unit, "ge": ge, "gt": gt, "le": le, "lt": lt, "items_ge": items_ge}
    md = {k: v for k, v in md.items() if v is not None or k == "doc"}
    if isinstance(default, (list, dict, set)):
        frozen = copy.deepcopy(default)
        return field(default_factory=lambda: copy.deepcopy(frozen), metadata=md)
    return field(default=default, metadata=md)


def section(cls, doc: str = ""):
    """A nested section field (a dataclass of knobs)."""
    return field(default_factory=cls, metadata={"doc": doc or (cls.__doc__ or "").strip().splitlines()[0]})


def need(ok: bool, key: str, msg: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"{key}: {msg}")


# ---------------------------------------------------------------- frame-size units


def frame_scale(shape, unit: str = "px@512", reference: float | None = None) -> float:
    """Stored-frame pixels per pixel of ``unit`` on a frame of ``shape`` ((H, W, ...) or (H, W)):
    for ``px@512`` / ``px@240`` the stored short side over that reference side (``reference``: a
    section's own ``reference_short_side`` knob instead), 1.0 for plain ``px``. The one place the
    ``px@N`` units of :data:`UNITS` are applied."""
    if unit == "px":
        return 1.0
    if not unit.startswith("px@") or not unit[3:].isdigit():
        raise ValueError(f"{unit!r} is not a frame-size unit (px, px@512, px@240)")
    ref = float(unit[3:]) if reference is None else float(reference)
    return min(shape[0], shape[1]) / ref


def scaled(section: Any, name: str, shape, reference: float | None = None) -> float:
    """Knob ``name`` of config ``section`` in stored-frame pixels on a frame of ``shape``: its value
    times :func:`frame_scale` of its declared unit (``reference``: the section's reference side)."""
    f = next(f for f in dataclasses.fields(section) if f.name == name)
    return getattr(section, name) * frame_scale(shape, f.metadata.get("unit") or "px", reference)


# ---------------------------------------------------------------- types


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp`` (int -> float allowed); ConfigError names ``key``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value in allowed and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {list(allowed)}")
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(value, a, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
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
        if isinstance(value, str) and re.fullmatch(r"[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+", value.strip()):
            return float(value)  # YAML 1.1 reads `1e-3` (no dot) as a string
        raise ConfigError(f"{key}: expected a number, got {type(value).__name__} {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {type(value).__name__} {value!r}")
    raise ConfigError(f"{key}: unsupported type {tp}")


def build(cls, data: dict, prefix: str = ""):
    """A ``cls`` instance from a mapping: unknown keys and wrong types raise, naming the dotted key."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = prefix + unknown[0]
        raise ConfigError(
            f"{key}: unknown config key (known keys under "
            f"'{prefix.rstrip('.') or '<top>'}': {', '.join(sorted(fields))})"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            kwargs[name] = build(tp, value, f"{prefix}{name}.")
        else:
            kwargs[name] = coerce(value, tp, prefix + name)
    return cls(**kwargs)


# ---------------------------------------------------------------- validation


def _range_text(md: dict) -> str:
    parts = []
    for k, op in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if k in md:
            parts.append(f"{op} {md[k]:g}")
    if "items_ge" in md:
        parts.append(f"each >= {md['items_ge']:g}")
    return ", ".join(parts)


def _check_range(v: Any, md: dict, key: str) -> None:
    if v is None or isinstance(v, bool):
        return
    if isinstance(v, (list, tuple)):
        if "items_ge" in md:
            for i, x in enumerate(v):
                need(
                    isinstance(x, (int, float)) and x >= md["items_ge"], f"{key}[{i}]", f"must be >= {md['items_ge']:g}"
                )
        return
    if not isinstance(v, (int, float)):
        return
    rng = _range_text({k: md[k] for k in _RANGE_KEYS if k in md})
    if not rng:
        return
    ok = math.isfinite(v) and all(
        (
            "ge" not in md or v >= md["ge"],
            "gt" not in md or v > md["gt"],
            "le" not in md or v <= md["le"],
            "lt" not in md or v < md["lt"],
        )
    )
    need(ok, key, f"must be {rng.replace(', ', ' and ')}, got {v!r}")


def _literal_choices(tp: Any) -> tuple | None:
    if typing.get_origin(tp) is Literal:
        return typing.get_args(tp)
    if typing.get_origin(tp) in (Union, types.UnionType):
        for a in typing.get_args(tp):
            if typing.get_origin(a) is Literal:
                return typing.get_args(a)
    return None


def validate(obj: Any, prefix: str = "") -> None:
    """Choices and ranges of every knob of ``obj`` and its sections, then each section's
    ``check(prefix)`` (also for an object built directly, not through :func:`build`)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(v):
            validate(v, key + ".")
            continue
        choices = _literal_choices(hints[f.name])
        if choices is not None and v is not None:
            need(v in choices, key, f"{v!r} is not one of {list(choices)}")
        _check_range(v, f.metadata, key)
    check = getattr(obj, "check", None)
    if callable(check):
        check(prefix.rstrip("."))


# ---------------------------------------------------------------- docs


def type_text(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " \\| ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        s = " or ".join(type_text(a) for a in args)
        return s + " or null" if len(args) < len(typing.get_args(tp)) else s
    if origin is list:
        return f"list of {type_text(typing.get_args(tp)[0])}"
    return getattr(tp, "__name__", str(tp))


def default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return MISSING


def section_markdown(cls, prefix: str) -> list[str]:
    """A markdown table of the knobs of section ``cls`` (keys under ``prefix``)."""
    hints = typing.get_type_hints(cls)
    out = ["| key | type | default | unit | range | meaning |", "|---|---|---|---|---|---|"]
    for f in dataclasses.fields(cls):
        md = f.metadata
        if "doc" not in md:
            raise ValueError(f"{cls.__name__}.{f.name}: not declared with knob() (no doc)")
        d = default_of(f)
        out.append(
            f"| `{prefix}{f.name}` | {type_text(hints[f.name])} | `{d!r}` | {md.get('unit') or ''} | "
            f"{_range_text(md)} | {md['doc'].replace('|', '/')} |"
        )
    return out
