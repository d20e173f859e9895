"""The stage contract: what a stage module declares next to its pure core.

A stage is a class. Besides doing its work (:class:`PairStage`: pair items in, pair items or
rejects out; no Ray), it declares as class attributes and classmethods:

* ``name``: the stage's name (rejects, progress, crash reports);
* ``sections``: the config sections it owns, ``{"track": TrackConfig, "drag": DragConfig}``
  (dataclasses of :func:`vid2pair.core.spec.knob` fields);
* ``reads``: the arrays / meta fields it reads; ``writes``: the tar members it adds
  (:class:`Member`: member name, the ``arrays`` / ``meta`` key holding it, the codec);
  ``provides``: the arrays it adds that are no tar member (the frames, a validity mask) for the
  stages after it. Every read has a provider before it (a member's key or a ``provides`` entry):
  :func:`vid2pair.pipeline.plan.check_arrays` checks it before any work, and the plan tells each
  built stage which arrays the enabled stages after it read (:attr:`Stage.wanted`), so a stage
  emits an optional array only when someone reads it, without looking at another stage's config;
* ``signals``: the training signals a sample carries when it holds some of those members
  (:class:`Signal`; the QC report and the trainer read them from here);
* :meth:`enabled`, whether the config turns the stage on;
* :meth:`resources`, ``None`` for a stage without a model (the runners fuse such stages with
  their neighbours), or a :class:`Resources` (Ray runs it as an actor pool);
* :meth:`needs`, the weights and optional extras its config needs (:class:`Need`; an explicit
  local path counts as present), checked before any work;
* :meth:`index_columns`, the scalars of a written sample's meta that go into the parquet index;
* :meth:`frames_read`, how many frames between source and target it reads (the clip stage decodes
  that many).

``vid2pair.pipeline.graph`` lists the stages in order; everything else (the Ray grouping, the
pre-flight check, the encoder's member list, the QC signal list, the trainer's member names, the
config tree) is derived from these declarations by ``vid2pair.pipeline.plan``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Literal, Optional

from vid2pair.core.items import Item, PairItem, Reject
from vid2pair.core.preview import preview_strip

__all__ = [
    "Member",
    "TrainInput",
    "Score",
    "Metrics",
    "Signal",
    "Resources",
    "Need",
    "Stage",
    "PairStage",
    "pair_reject",
    "drop_signal",
]


@dataclass(frozen=True)
class Member:
    """A tar member a stage writes: ``name`` (``"sketch.png"``) from ``arrays[key]`` (``png`` /
    ``npy``) or ``meta[key]`` (``json``: moved out of meta.json into its own member)."""

    name: str
    key: str
    codec: Literal["png", "npy", "json"]


@dataclass(frozen=True)
class TrainInput:
    """How the trainer conditions a model on a signal; a signal that declares one is a trainer task
    (``vid2pair train`` with ``task: <signal>``).

    * ``channels``: C of the (C, H, W) conditioning image;
    * ``decode(r) -> dict``: ``r`` reads the sample's members at the model resolution
      (:class:`vid2pair.trainer.data.SampleReader`: ``image``, ``json``, ``points``, ``size``,
      ``rng``, ``spec``); returns ``{"signal": (C, H, W) float32 array, **extras}``;
    * ``extras``: the batch keys ``decode`` adds besides ``signal`` (a model may use them: the drag
      task's ``drag_points`` feed FramePainter's drag injection);
    * ``display(signal, src) -> (B, 3, H, W)`` in [0, 1]: the signal drawn for the image grids
      (``signal`` (B, C, H, W), ``src`` (B, 3, H, W) in [-1, 1]: tensors);
    * ``baseline(signal, src)``: the signal itself as an answer (an image in [-1, 1]) where it is
      one, which evaluation scores beside the model; ``None`` where it is not."""

    channels: int
    decode: Callable[..., dict] = field(compare=False, repr=False)
    display: Callable[..., Any] = field(compare=False, repr=False)
    extras: tuple[str, ...] = ()
    baseline: Optional[Callable[..., Any]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Score:
    """A score a signal's judge writes into ``meta["quality"]``; the index has it as ``q_<name>``.
    With a ``title`` the QC report plots it (with the ``quality.*`` ``thresholds`` drawn), and
    ``worse`` says which end is worse (the report's worst-first order)."""

    name: str
    dtype: Literal["float64", "int64"] = "float64"
    title: str = ""
    thresholds: tuple[str, ...] = ()
    worse: Literal["low", "high"] = "high"


@dataclass(frozen=True)
class Metrics:
    """What the QC report measures of a signal in a written sample.

    * ``names``: the meta-table columns :attr:`measure` gives (``qc.META_METRICS``);
    * ``measure(meta, read) -> dict``: those values from the sample's meta.json dict and ``read(member)``
      (a small json member, parsed, or None), None where the sample lacks the signal;
    * ``caption(values) -> str | None``: its words in the sample's one-line caption;
    * ``plot(view)``: its panel of the report's histograms (``view``:
      :class:`vid2pair.pipeline.qc_figures.PlotView`: ``col``, ``hist``, ``ax``, ``missing``)."""

    names: tuple[str, ...]
    measure: Callable[..., dict] = field(compare=False, repr=False)
    caption: Optional[Callable[[dict], Optional[str]]] = field(default=None, compare=False, repr=False)
    plot: Optional[Callable[..., None]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Signal:
    """A training signal: a sample carries it when it holds every one of ``members``; ``switch`` is
    the config key that turns it on (the QC report names it when a signal is missing)."""

    name: str
    members: tuple[str, ...]
    switch: str
    #: other config switches it needs on (the report names the one that is off)
    requires: tuple[str, ...] = ()
    #: the signal's own quality rules, ``judge(p, it, scores, failed)``: ``p`` the pair's evidence (the
    #: quality stage's ``_Pair``), ``it`` the pair (the judge may filter the signal's members in place),
    #: ``scores`` the dict its scores go into, ``failed`` ``{signal: (reason, detail)}`` for a failed
    #: rule. The quality stage runs it after its pair rules; a signal without one passes unjudged
    judge: Optional[Callable[..., None]] = field(default=None, compare=False, repr=False)
    #: the QC panels it draws, by name, in gallery order, and ``draw(view) -> [Panel]`` drawing them
    #: (``view``: :class:`vid2pair.ops.draw.PanelView`; a placeholder saying why when the sample lacks it)
    panels: tuple[str, ...] = ()
    draw: Optional[Callable[..., list]] = field(default=None, compare=False, repr=False)
    #: the scores its judge writes (:class:`Score`: index columns ``q_<name>``, QC histograms)
    scores: tuple[Score, ...] = ()
    #: what the QC report measures of it (:class:`Metrics`)
    metrics: Optional[Metrics] = field(default=None, compare=False, repr=False)
    #: how the trainer is conditioned on it (:class:`TrainInput`); ``None``: not a trainer task
    train: Optional[TrainInput] = field(default=None, compare=False, repr=False)
    #: its panel in a rejected pair's preview strip, ``preview(arrays) -> (H, W, 3) uint8 | None`` (None:
    #: the pair does not have it yet); a strip shows the first a pair has, lowest ``preview_rank`` first
    preview: Optional[Callable[[dict], Any]] = field(default=None, compare=False, repr=False)
    preview_rank: int = 0
    #: correspondences for a model's matching attention, ``matches(r, grids) -> {"match_idx_{h}x{w}":
    #: (h*w,) int64}`` (``r``: the trainer's sample reader; the source token of each target token, -1
    #: where unsupervised); the trainer takes them from the signal that declares this
    matches: Optional[Callable[..., dict]] = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Resources:
    """A stage that holds a model: Ray runs it as ``actors`` actors with ``num_gpus`` GPUs (a
    fraction packs several on one GPU) and ``num_cpus`` CPUs each, ``batch_size`` pairs per call.
    ``gpu_key`` is the config key of the GPU share (named in resource errors)."""

    actors: int = 1
    num_gpus: float = 0.0
    num_cpus: float = 0.25
    batch_size: int = 4
    gpu_key: str = ""


@dataclass(frozen=True)
class Need:
    """Something a stage's config needs before any work: registry ``weights`` (entry ``name``, or the
    explicit local ``path`` the config key ``path_key`` gives, which then counts instead) or an
    optional ``extra`` (import ``name``, pip extra ``extra``). ``key`` is the config setting that
    asks for it (named in the error)."""

    what: Literal["weights", "extra"]
    name: str
    key: str
    path: Optional[str] = None
    path_key: str = ""
    extra: str = ""


class Stage:
    """Declarations shared by every stage (see the module docstring)."""

    name: ClassVar[str] = "stage"
    sections: ClassVar[dict[str, type]] = {}
    reads: ClassVar[tuple[str, ...]] = ()
    writes: ClassVar[tuple[Member, ...]] = ()
    provides: ClassVar[tuple[str, ...]] = ()
    signals: ClassVar[tuple[Signal, ...]] = ()
    #: the arrays / meta fields the enabled stages after this one read, set by the plan when it builds
    #: the stage; ``None`` (a stage built by hand): every optional output is produced
    wanted: Optional[frozenset[str]] = None
    #: the signals' preview panels a pair-level reject's strip tries, in order (set by the plan; a stage
    #: built by hand shows the source and target only)
    previews: tuple = ()
    #: the index columns :meth:`index_columns` can give, with their types (``float64``, ``int64``,
    #: ``string``, ``bool``): every part of ``index/`` has all of them, so the folder reads as one table
    index_schema: ClassVar[dict[str, str]] = {}

    @classmethod
    def enabled(cls, cfg: Any) -> bool:
        """On unless its first section says ``enabled: false``."""
        for sec in cls.sections:
            return bool(getattr(getattr(cfg, sec), "enabled", True))
        return True

    @classmethod
    def resources(cls, cfg: Any) -> Optional[Resources]:
        return None

    @classmethod
    def needs(cls, cfg: Any) -> list[Need]:
        return []

    @classmethod
    def index_columns(cls, meta: dict) -> dict:
        return {}

    @classmethod
    def index_types(cls, before: tuple = ()) -> dict[str, str]:
        """The index columns it gives, with their types: :attr:`index_schema`, plus what it derives
        from the stages ``before`` it (the quality stage: the scores their signals declare)."""
        return dict(cls.index_schema)

    @classmethod
    def frames_read(cls, cfg: Any) -> int:
        """How many frames of a pair, source to target evenly spaced (both included), the stage reads
        from ``arrays["frames"]``; the clip stage decodes the most any enabled stage reads."""
        return 2

    @classmethod
    def build(cls, cfg: Any, upstream: tuple[type, ...] = ()) -> "Stage":
        """The stage object for ``cfg``; ``upstream`` are the enabled stage classes before it."""
        return cls(cfg)

    def wants(self, key: str) -> bool:
        """Does a stage after this one read ``key`` (always true for a stage built by hand)?"""
        return self.wanted is None or key in self.wanted

    def close(self) -> None:
        """Release what the stage holds (child processes, models)."""


class PairStage(Stage):
    """Base for stages that transform pair items; rejects and markers pass through untouched."""

    name = "pair"

    def __init__(self, cfg: Any) -> None:
        self.cfg = cfg

    def __call__(self, items: list[Item]) -> list[Item]:
        pairs_in = [i for i in items if isinstance(i, PairItem)]
        done = {id(i): r for i, r in zip(pairs_in, self.process(pairs_in))} if pairs_in else {}
        for i in pairs_in:  # a pair rejected here: its preview, from the pair as the stage left it
            r = done[id(i)]
            if isinstance(r, Reject) and r.level == "pair" and not r.preview:
                r.preview = reject_preview(i, self.previews)
        return [done.get(id(i), i) for i in items]

    def process(self, items: list[PairItem]) -> list[Item]:
        out = []
        for it in items:
            try:
                out.append(self.one(it))
            except Exception as e:
                out.append(pair_reject(it, self.name, "stage_error", f"{type(e).__name__}: {e}"[:500]))
        return out

    def one(self, it: PairItem) -> Item:
        raise NotImplementedError


def drop_signal(it: PairItem, stage: str, signal: str, reason: str, detail: str = "") -> PairItem:
    """Record that ``stage`` dropped ``signal`` from this pair (the pair goes on with its other
    signals). The writer turns each record into a ``signal``-level row of the rejects table; the
    stage removes the signal's arrays itself."""
    it.meta.setdefault("signal_rejects", []).append(
        {"stage": stage, "signal": signal, "reason": reason, "detail": str(detail)[:500]}
    )
    return it


def reject_preview(it: PairItem, previews: tuple = ()) -> bytes:
    """A small preview of rejected pair ``it`` (the writer keeps up to ``output.reject_previews`` of
    them): source | target | the first of the signals' ``previews`` it has."""
    try:
        return preview_strip(it.arrays, signals=previews)
    except Exception:  # a preview must never cost the reject
        return b""


def pair_reject(it: PairItem, stage: str, reason: str, detail: str = "") -> Reject:
    """The pair-level reject of ``it``; the stage that returns it adds the pair's preview
    (:func:`reject_preview`, in :meth:`PairStage.__call__`)."""
    return Reject(
        source=it.source,
        clip_id=it.clip_id,
        chunk=it.chunk,
        clip_idx=it.clip_idx,
        stage=stage,
        reason=reason,
        detail=detail,
        level="pair",
        key=it.key,
    )
