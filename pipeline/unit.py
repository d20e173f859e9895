"""The unit a runner runs per clip: the clip stage, then the pair stages fused with it, pair by pair,
in an isolation child (a crash or hang loses that clip only) or in process (:class:`ClipUnit`);
:func:`run_items` runs the rest of a clip's stages on what it yields."""

from __future__ import annotations

from typing import Iterable, Iterator, Optional

from vid2pair.core.items import ClipDone, ClipTask, Item, PairItem, Reject
from vid2pair.core.stage import Stage
from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.plan import build_pair_stages, frames_to_decode, pair_classes
from vid2pair.stages.clip import CLIP_STEPS, clip_reject


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

        for it in self.clip.iter_items(task, report):
            first, passed = it, False
            while True:
                out = [it]
                frames = it.arrays.get("frames") if isinstance(it, PairItem) else None
                meta = copy.deepcopy(it.meta) if frames is not None else None
                if isinstance(it, PairItem):
                    for st in self.fused:
                        report(st.name)
                        out = st(out)
                # a pair rejected for motion the estimates cannot follow: again at a shorter gap
                nxt = None
                if frames is not None and len(out) == 1 and isinstance(out[0], Reject) and self.clip.retries(out[0]):
                    nxt = self.clip.retry_item(it, meta, frames)
                    if nxt is not None:
                        out[0].detail = (f"{out[0].detail}; retried at dt {nxt.meta['dt']:g} s as {nxt.key}")[:500]
                passed = passed or any(isinstance(o, PairItem) for o in out)
                yield from out
                if nxt is None:
                    break
                it = nxt
            if isinstance(first, PairItem) and not passed:
                self.clip.rejected_one(first)  # a spare candidate replaces it

    def __call__(self, task: ClipTask, report) -> list[Item]:
        """In the isolation child: each item goes to the parent as soon as it is ready (``report.emit``)."""
        emit = getattr(report, "emit", None)
        if emit is None:
            return list(self.iter(task, report))
        for it in self.iter(task, report):
            emit(it)
        return [ClipInfo(self.clip.info)]


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
