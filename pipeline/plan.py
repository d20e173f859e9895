"""Everything derived from the stage declarations of :mod:`vid2pair.pipeline.graph`.

* which stages a config enables, and their objects (:func:`build_pair_stages`);
* that every array a stage reads has a provider before it (:func:`check_arrays`), what the stages
  after each one read (:func:`build_stage`), the frames the clip stage decodes (:func:`frames_to_decode`);
* the Ray layout: the CPU stages before the first model stage run fused with the clip stage, in its
  isolation child (:func:`fused_prefix`); each model stage is a pool of actors (:func:`model_stages`)
  that receive only the arrays the stage reads (:mod:`vid2pair.pipeline.transfer`);
* the signals' judges (:func:`signal_judges`);
* the pre-flight needs (weights, extras) of a config (:func:`needs`);
* the training signals and their tar members (:func:`signals`, :func:`signal_members`), and the
  trainer's tasks (:func:`trainer_tasks`);
* the index columns of a written sample (:func:`index_columns`).

A ``stages`` tuple (default :data:`~vid2pair.pipeline.graph.STAGES`, the clip stage first) can be
given everywhere: tests insert their own stages (faults, probes) that way. The unit a runner runs per
clip (the clip stage and the stages fused with it, in an isolation child) is
:class:`vid2pair.pipeline.unit.ClipUnit`.
"""

from __future__ import annotations

from typing import Callable, Iterable

from vid2pair.core.stage import Need, Resources, Signal, Stage
from vid2pair.pipeline.graph import STAGES


def pair_classes(cfg, stages: tuple = STAGES) -> tuple[type, ...]:
    """The pair-stage classes ``cfg`` enables, in order."""
    return tuple(S for S in stages[1:] if S.enabled(cfg))


def provided(S: type) -> set[str]:
    """The arrays / meta fields stage class ``S`` adds: its members' keys and its ``provides``."""
    return {m.key for m in S.writes} | set(S.provides)


class PlanError(ValueError):
    """The stage list does not fit together (an array read before anything provides it)."""


def check_arrays(stages: tuple = STAGES) -> None:
    """Every array or meta field a stage reads is provided by a stage before it in ``stages`` (the
    whole graph, enabled or not: a read of a disabled stage's output is optional). Raises
    :class:`PlanError` naming the reader, the array and, when it runs later, the provider."""
    problems = []
    for k, S in enumerate(stages):
        before = set().union(*(provided(T) for T in stages[:k]))
        for key in S.reads:
            if key in before:
                continue
            later = [T.__name__ for T in stages[k + 1 :] if key in provided(T)]
            problems.append(
                f"{S.__name__} (stage {S.name!r}) reads {key!r}, which "
                + (
                    f"{', '.join(later)} provides only after it"
                    if later
                    else "no stage provides (declare it in a stage's writes or provides)"
                )
            )
    if problems:
        raise PlanError("the stages do not fit together: " + "; ".join(problems))


def frames_to_decode(cfg, classes: Iterable[type] | None = None) -> int:
    """The frames per pair the clip stage decodes: the most any of ``classes`` (default: the enabled
    pair stages) reads (:meth:`~vid2pair.core.stage.Stage.frames_read`)."""
    classes = pair_classes(cfg) if classes is None else tuple(classes)
    return max([2, *(S.frames_read(cfg) for S in classes)])


def build_stage(cfg, S: type, upstream: tuple = (), downstream: tuple = ()) -> Stage:
    """The stage object of ``S`` for ``cfg``, built knowing the enabled classes before it and told
    what the enabled classes after it read (:attr:`~vid2pair.core.stage.Stage.wanted`)."""
    st = S.build(cfg, tuple(upstream))
    st.wanted = frozenset(key for T in downstream for key in T.reads)
    st.previews = signal_previews((*upstream, S, *downstream))
    return st


def build_pair_stages(cfg, classes: Iterable[type], after: tuple = ()) -> list[Stage]:
    """Stage objects for ``classes``; ``after``: the enabled classes that run after all of them."""
    classes = tuple(classes)
    return [build_stage(cfg, S, classes[:k], classes[k + 1 :] + tuple(after)) for k, S in enumerate(classes)]


def fused_prefix(cfg, classes: tuple[type, ...]) -> tuple[type, ...]:
    """The pair stages before the first model stage (none holds a model or a GPU): the runners run
    them with the clip stage, in its isolation child."""
    out = []
    for S in classes:
        if S.resources(cfg) is not None:
            break
        out.append(S)
    return tuple(out)


def model_stages(cfg, classes: tuple[type, ...]) -> list[tuple[type, Resources]]:
    """The pair stages that hold a model, with their resources: the Ray runner runs each as a pool of
    actors (one model per actor, with its GPU share) that the clip tasks call with only the arrays
    the stage reads (:func:`slim`)."""
    out = []
    for S in classes:
        res = S.resources(cfg)
        if res is not None:
            out.append((S, res))
    return out


def needs(cfg, stages: tuple = STAGES) -> list[Need]:
    """Weights and extras the enabled stages of ``cfg`` need, de-duplicated, in pipeline order."""
    out: list[Need] = []
    for S in stages:
        if S.enabled(cfg):
            out += [n for n in S.needs(cfg) if n not in out]
    return out


def signals(stages: tuple = STAGES) -> dict[str, Signal]:
    """Every training signal the stages can write, by name (whatever a config enables)."""
    return {sig.name: sig for S in stages for sig in S.signals}


def signal_judges(stages: tuple = STAGES) -> list[tuple[str, Callable]]:
    """``(name, judge)`` of every signal that declares its own quality rules (:attr:`Signal.judge`),
    in stage order: what :func:`vid2pair.stages.quality.judge` runs after its pair rules."""
    return [(g.name, g.judge) for S in stages for g in S.signals if g.judge is not None]


def signal_previews(stages: tuple = STAGES) -> tuple:
    """The signals' preview panels (:attr:`Signal.preview`) a rejected pair's strip tries, lowest
    ``preview_rank`` first (the coarse edit, the collage, the sketch, the flow)."""
    sigs = [g for S in stages for g in S.signals if g.preview is not None]
    return tuple(g.preview for g in sorted(sigs, key=lambda g: g.preview_rank))


def signal_members(name: str, stages: tuple = STAGES) -> tuple[str, ...]:
    """The tar members a sample holds when it carries signal ``name`` (KeyError names the known ones)."""
    sigs = signals(stages)
    if name not in sigs:
        raise KeyError(f"unknown signal {name!r}; known: {', '.join(sigs)}")
    return sigs[name].members


def current_stages() -> tuple:
    """The stage list of :mod:`vid2pair.pipeline.graph` as it is now (what the trainer follows)."""
    from vid2pair.pipeline import graph

    return graph.STAGES


def trainer_tasks(stages: tuple | None = None) -> dict[str, Signal]:
    """The signals a model can be trained on (those declaring a :class:`~vid2pair.core.stage.TrainInput`),
    by name, in stage order. ``None``: the stage list of :mod:`vid2pair.pipeline.graph` as it is when
    called (the trainer's tasks follow that one list)."""
    stages = current_stages() if stages is None else stages
    return {name: g for name, g in signals(stages).items() if g.train is not None}


def trainer_task(name: str, stages: tuple | None = None) -> Signal:
    """The signal of trainer task ``name`` (KeyError names the tasks there are)."""
    tasks = trainer_tasks(stages)
    if name not in tasks:
        raise KeyError(f"unknown task {name!r}: the trainable signals are {', '.join(tasks)}")
    return tasks[name]


def index_columns(meta: dict, stages: tuple = STAGES) -> dict:
    """The index scalars the stages declare for a written sample's meta."""
    out: dict = {}
    for S in stages:
        out.update(S.index_columns(meta))
    return out


def index_types(cfg, stages: tuple = STAGES) -> dict[str, str]:
    """Every index column the enabled stages of ``cfg`` can give, with its type (``Stage.index_types``)."""
    out: dict[str, str] = {}
    for i, S in enumerate(stages):
        if S.enabled(cfg):
            out.update(S.index_types(tuple(stages[:i])))
    return out


def sections(stages: tuple = STAGES) -> dict[str, type]:
    """The config sections the stages own, in pipeline order."""
    out: dict[str, type] = {}
    for S in stages:
        for name, cls in S.sections.items():
            if name in out and out[name] is not cls:
                raise TypeError(f"config section {name!r} is declared by two stages")
            out[name] = cls
    return out


def batch_size_of(cfg, classes: Iterable[type]) -> int:
    """The largest per-call batch the model stages among ``classes`` ask for (1 without any)."""
    return max([1] + [r.batch_size for r in (S.resources(cfg) for S in classes) if r is not None])
