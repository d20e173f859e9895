"""Everything derived from the stage declarations of :mod:`vid2pair.pipeline.graph`.

* which stages a config enables, and their objects (:func:`build_pair_stages`);
* the Ray layout: the CPU stages before the first model stage run fused with the clip stage, in its
  isolation child (:func:`fused_prefix`); each model stage is a pool of actors (:func:`model_stages`)
  that receive only the arrays the stage reads (:func:`slim`, :func:`mark_unchanged`,
  :func:`merge_back`);
* the unit a runner runs per clip, isolated in a child process (:class:`ClipUnit`);
* the pre-flight needs (weights, extras) of a config (:func:`needs`);
* the training signals and their tar members (:func:`signals`, :func:`signal_members`);
* the index columns of a written sample (:func:`index_columns`).

A ``stages`` tuple (default :data:`~vid2pair.pipeline.graph.STAGES`, the clip stage first) can be
given everywhere: tests insert their own stages (faults, probes) that way.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator, Optional

from vid2pair.core.items import ClipDone, ClipTask, Item, PairItem, Reject
from vid2pair.core.stage import Need, Resources, Signal, Stage
from vid2pair.pipeline.graph import STAGES
from vid2pair.stages.clip import CLIP_STEPS, clip_reject


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


# ---------------------------------------------------------------- a model stage's share of a pair

#: in what a model stage sends back: "rows ``start:stop`` of the array ``key`` you sent me"
#: (``(SAME, key, start, stop, one)``, ``one``: a single row, without its axis)
SAME = "__vid2pair_same__"


def slim(items: list[Item], reads: Iterable[str]) -> list[Item]:
    """What a model stage receives: each pair with only the arrays the stage declares in ``reads``
    (meta whole, no encoded files); rejects and markers are not sent."""
    reads = set(reads)
    return [
        PairItem(
            key=it.key,
            clip_id=it.clip_id,
            source=it.source,
            chunk=it.chunk,
            clip_idx=it.clip_idx,
            meta=it.meta,
            arrays={k: v for k, v in it.arrays.items() if k in reads},
        )
        for it in items
        if isinstance(it, PairItem)
    ]


def _rows_of(v, s):
    """``(start, stop, one)`` when ``v`` is rows of ``s`` along its first axis (the same memory), else None."""
    import numpy as np

    if not (
        isinstance(s, np.ndarray)
        and isinstance(v, np.ndarray)
        and s.ndim > 0
        and s.dtype == v.dtype
        and s.strides[0] > 0
    ):
        return None
    off = v.__array_interface__["data"][0] - s.__array_interface__["data"][0]
    if off < 0 or off % s.strides[0]:
        return None
    start = off // s.strides[0]
    if v.shape == s.shape[1:] and v.strides == s.strides[1:] and start < s.shape[0]:
        return start, start + 1, True
    if v.ndim == s.ndim and v.shape[1:] == s.shape[1:] and v.strides == s.strides and start + v.shape[0] <= s.shape[0]:
        return start, start + v.shape[0], False
    return None


def mark_unchanged(sent: dict, out: dict, before: dict) -> dict:
    """The arrays a model stage returns, with every one that is an array it was sent, or rows of one
    (frames cut at a target, the source as frame 0), and still holds what ``before`` (a copy of the
    arrays as sent) holds there, replaced by a ``SAME`` marker: it does not travel back. An array the
    stage changed in place travels back."""
    import numpy as np

    marked = {}
    for k, v in out.items():
        marked[k] = v
        for sk, s in ([(k, sent[k])] if k in sent else []) + list(sent.items()):
            rows = _rows_of(v, s)
            if rows is not None:
                start, stop, one = rows
                if np.array_equal(v, before[sk][start] if one else before[sk][start:stop]):
                    marked[k] = (SAME, sk, *rows)
                break
    return marked


def merge_back(orig: PairItem, out: Item, sent: Iterable[str]) -> Item:
    """``orig`` after a model stage returned ``out`` for its slim copy: the arrays that were not sent
    stay, the sent ones become what the stage left of them (kept, cut, replaced or dropped), the new
    ones are added. A reject gets its preview from the whole pair, as in process."""
    from vid2pair.core.preview import preview_strip

    if not isinstance(out, PairItem):
        if isinstance(out, Reject) and out.level == "pair":
            try:
                out.preview = preview_strip(orig.arrays)
            except Exception:  # a preview must never cost the reject
                out.preview = b""
        return out
    sent = set(sent)
    arrays = {k: v for k, v in orig.arrays.items() if k not in sent}
    for k, v in out.arrays.items():
        if isinstance(v, tuple) and len(v) == 5 and v[0] == SAME:
            _, sk, start, stop, one = v
            v = orig.arrays[sk][start] if one else orig.arrays[sk][start:stop]
        arrays[k] = v
    out.arrays = arrays
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


def signal_members(name: str, stages: tuple = STAGES) -> tuple[str, ...]:
    """The tar members a sample holds when it carries signal ``name`` (KeyError names the known ones)."""
    sigs = signals(stages)
    if name not in sigs:
        raise KeyError(f"unknown signal {name!r}; known: {', '.join(sigs)}")
    return sigs[name].members


def index_columns(meta: dict, stages: tuple = STAGES) -> dict:
    """The index scalars the stages declare for a written sample's meta."""
    out: dict = {}
    for S in stages:
        out.update(S.index_columns(meta))
    return out


def index_types(cfg, stages: tuple = STAGES) -> dict[str, str]:
    """Every index column the enabled stages of ``cfg`` can give, with its type (``Stage.index_schema``)."""
    out: dict[str, str] = {}
    for S in stages:
        if S.enabled(cfg):
            out.update(S.index_schema)
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


# ---------------------------------------------------------------- the per-clip unit


def _crash_reject(task: ClipTask, status: str, detail: str, step: str, fused: tuple[str, ...]) -> Reject:
    """A crash, hang or error in the isolated work, recorded against the step that was running."""
    step = step or "probe"
    if step in CLIP_STEPS:
        reason = {"crashed": "decoder_crashed", "timeout": "decode_timeout", "error": "decoder_error"}[status]
    else:
        reason = {"crashed": "stage_crashed", "timeout": "stage_timeout", "error": "stage_error"}[status]
    where = f"in {step}" + (f" (the child runs decoding, then {', '.join(fused)})" if fused else "")
    return clip_reject(task, step, reason, f"{detail} {where}"[:500])


class ClipInfo:
    """What the clip stage learned about a clip besides its items (its decode figures), sent back from
    the isolation child after the last item; it ends up in the clip's :class:`ClipDone`."""

    def __init__(self, info: dict):
        self.info = dict(info)


class _UnitWork:
    """What runs (in the isolation child, or in process): the clip stage, then the fused stages,
    pair by pair: a pair's frames are decoded, run through the fused stages and handed on before
    the next pair is decoded, so memory holds one pair's frames however long the clip is."""

    def __init__(self, cfg, clip_cls: type, fused: tuple[type, ...], after: tuple[type, ...] = ()):
        from vid2pair.pipeline.storage import local_copy

        self.clip = clip_cls(cfg, opener=local_copy, frames=frames_to_decode(cfg, tuple(fused) + tuple(after)))
        self.fused = build_pair_stages(cfg, fused, after)

    def iter(self, task: ClipTask, report) -> Iterator[Item]:
        import copy

        from vid2pair.stages.pairs import RETRY_REASONS

        items = self.clip.iter_items(task, report) if hasattr(self.clip, "iter_items") else self.clip(task, report)
        retry = getattr(self.clip, "retry_item", None)
        for it in items:
            first, passed = it, False
            while True:
                out = [it]
                frames = it.arrays.get("frames") if isinstance(it, PairItem) else None
                meta = copy.deepcopy(it.meta) if frames is not None and retry is not None else None
                if isinstance(it, PairItem):
                    for st in self.fused:
                        report(st.name)
                        out = st(out)
                # a pair rejected for motion the estimates cannot follow: again at a shorter gap
                nxt = None
                if (
                    retry is not None
                    and frames is not None
                    and len(out) == 1
                    and isinstance(out[0], Reject)
                    and out[0].level == "pair"
                    and out[0].reason in RETRY_REASONS
                ):
                    nxt = retry(it, meta, frames)
                    if nxt is not None:
                        out[0].detail = (f"{out[0].detail}; retried at dt {nxt.meta['dt']:g} s as {nxt.key}")[:500]
                passed = passed or any(isinstance(o, PairItem) for o in out)
                yield from out
                if nxt is None:
                    break
                it = nxt
            if isinstance(first, PairItem) and not passed and hasattr(self.clip, "rejected_one"):
                self.clip.rejected_one(first)  # a spare candidate replaces it

    def __call__(self, task: ClipTask, report) -> list[Item]:
        """In the isolation child: each item goes to the parent as soon as it is ready (``report.emit``)."""
        emit = getattr(report, "emit", None)
        if emit is None:
            return list(self.iter(task, report))
        for it in self.iter(task, report):
            emit(it)
        return [ClipInfo(getattr(self.clip, "info", {}))]


def _unit_work(cfg, clip_cls: type, fused: tuple[type, ...], after: tuple[type, ...] = ()) -> _UnitWork:
    """Factory run inside the isolation child."""
    return _UnitWork(cfg, clip_cls, fused, after)


class ClipUnit:
    """The clip stage plus the pair stages ``fused`` with it, for one clip at a time, in an isolation
    child (``isolation.mode: process``: a crash or hang there loses that clip only, the frames never
    cross the pipe) or in process. Ends every clip's items with its :class:`ClipDone`. ``after``: the
    enabled pair stages that run after the fused ones (default: those of the stage graph), whose
    reads decide what the fused stages emit."""

    def __init__(
        self, cfg, fused: tuple[type, ...] = (), clip_cls: type = STAGES[0], after: Optional[tuple[type, ...]] = None
    ):
        self.cfg, self.fused, self.clip_cls = cfg, tuple(fused), clip_cls
        self.after = tuple(S for S in pair_classes(cfg) if S not in self.fused) if after is None else tuple(after)
        self._isolated = None
        self._work = None

    def close(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None
        for st in getattr(self._work, "fused", ()):
            st.close()

    def __call__(self, task: ClipTask) -> list[Item]:
        return list(self.iter(task))

    def iter(self, task: ClipTask) -> Iterator[Item]:
        """The clip's items as they are ready, then its :class:`ClipDone`. A crash, hang or error
        mid-clip ends the clip with a reject naming the step; the items before it stand."""
        seen = {"items": 0, "pairs": 0, "rejects": 0}

        def counted(it: Item) -> Item:
            seen["items"] += 1
            seen["pairs"] += isinstance(it, PairItem)
            seen["rejects"] += isinstance(it, Reject)
            return it

        status, res, step = "ok", [], ""
        info: dict = {}
        if self.cfg.isolation.mode == "process":
            if self._isolated is None:
                from vid2pair.pipeline.isolation import IsolatedCall

                self._isolated = IsolatedCall(
                    _unit_work, (self.cfg, self.clip_cls, self.fused, self.after), self.cfg.isolation.clip_timeout_s
                )
            for kind, payload, last in self._isolated.stream(task):
                step = last
                if kind == "item":
                    yield counted(payload)
                else:
                    status, res = kind, payload
        else:
            if self._work is None:
                self._work = _UnitWork(self.cfg, self.clip_cls, self.fused, self.after)
            steps = [""]
            gen = self._work.iter(task, steps.append)
            while True:
                try:
                    it = next(gen)
                except StopIteration:
                    break
                except Exception as e:  # one bad video must never kill a job
                    status, res = "error", f"{type(e).__name__}: {e}"
                    break
                yield counted(it)
            step = steps[-1]
            info = getattr(self._work.clip, "info", {})
        if status == "ok":
            for it in res:  # a work function that returns its items instead of emitting them
                if isinstance(it, ClipInfo):
                    info = it.info
                else:
                    yield counted(it)
        else:
            yield counted(_crash_reject(task, status, str(res), step, tuple(S.name for S in self.fused)))
        if seen["pairs"] == 0 and seen["rejects"] == 0:
            yield counted(clip_reject(task, "pairs", "no_pairs", "no shot produced a pair"))
        yield ClipDone(
            source=task.source,
            clip_id=task.clip_id,
            chunk=task.chunk,
            clip_idx=task.clip_idx,
            n_items=seen["items"],
            info={"pairs": seen["pairs"], **info},
        )


def run_items(unit: ClipUnit, pair_stages: Iterable[Stage], task: ClipTask, batch_size: int = 1) -> Iterator[Item]:
    """All stages for one clip, in process (the local runner's unit of work): the unit's items go
    through the remaining stages ``batch_size`` pairs at a time, as they arrive, so memory holds
    at most a batch of pairs' frames."""
    pair_stages = list(pair_stages)
    buf: list[Item] = []
    for it in unit.iter(task):
        buf.append(it)
        if isinstance(it, ClipDone) or sum(isinstance(i, PairItem) for i in buf) >= batch_size:
            for st in pair_stages:
                buf = st(buf)
            yield from buf
            buf = []


def batch_size_of(cfg, classes: Iterable[type]) -> int:
    """The largest per-call batch the model stages among ``classes`` ask for (1 without any)."""
    return max([1] + [r.batch_size for r in (S.resources(cfg) for S in classes) if r is not None])
