"""The flow stage: optical flow source -> target for each pair (direct, chained over the frames in
between, or Magic Fixup's advance search), the dense flow as a signal (its judge and QC panel).

The backends (DIS, RAFT, SEA-RAFT) and their conventions are in :mod:`vid2pair.ops.flow_backends`,
the flow arithmetic (composition, inversion, warping, chaining indices) in
:mod:`vid2pair.ops.flow_math`; both are re-exported here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal, Optional

import cv2
import numpy as np

from vid2pair.core.items import Item, PairItem, pair_key
from vid2pair.core.spec import frame_scale, knob, need
from vid2pair.core.stage import Need, PairStage, Resources, Signal, pair_reject
from vid2pair.ops.draw import Panel, PanelView, flow_to_rgb
from vid2pair.ops.flow_backends import (  # noqa: F401  (re-exported)
    BACKENDS,
    DIS_PRESETS,
    SEA_RAFT_EXTRA_MESSAGE,
    DISFlow,
    DisPreset,
    FlowBackend,
    FlowBackendName,
    PtlflowSEARAFT,
    TorchvisionRAFT,
    _as_batches,
    _resolve_checkpoint,
    _round8,
    _TorchFlowModel,
    auto_finest_scale,
    chain_flow,
    dis_calc,
    flow_pair,
    make_flow_backend,
    plan_hops,
)
from vid2pair.ops.flow_math import (  # noqa: F401  (re-exported)
    _accumulate,
    _compose_single,
    _pixel_grid,
    chain_indices,
    compose_flows,
    invert_flow,
    median_filter_flow,
    motion_stat,
    warp_image,
)
from vid2pair.ops.image import to_gray  # noqa: F401  (re-exported)

__all__ = [
    "FlowBackend",
    "DISFlow",
    "TorchvisionRAFT",
    "PtlflowSEARAFT",
    "make_flow_backend",
    "compose_flows",
    "chain_indices",
    "chain_flow",
    "flow_pair",
    "warp_image",
    "SEA_RAFT_EXTRA_MESSAGE",
    "BACKENDS",
]


@dataclass
class FlowConfig:
    """Optical flow source -> target (direct, chained over intermediate frames, or flow_advance)."""

    backend: FlowBackendName = knob(
        "dis", "dis (weight-free, CPU) | raft_small | raft_large | sea_raft_s | sea_raft_m | sea_raft_l"
    )
    dis_preset: DisPreset = knob("medium", "dis: OpenCV DIS preset")
    weights: Optional[str] = knob(None, "explicit local checkpoint; default: the model cache (vid2pair models fetch)")
    device: str = knob("auto", "auto | cpu | cuda | cuda:N (model backends)")
    precision: Literal["fp32", "fp16", "bf16"] = knob("fp32", "half precision only on CUDA (autocast)")
    batch_size: int = knob(4, "pairs per flow-model call (and per actor batch in the Ray runner)", ge=1)
    iters: Optional[int] = knob(None, "RAFT refinement iterations (null: the model's default)", ge=1)
    inference_size: Optional[list[int]] = knob(
        None, "[H, W] the model runs at (multiples of 8); the flow is rescaled back", unit="px", items_ge=32
    )
    median_filter_px: Optional[int] = knob(
        None,
        "a median filter of this (odd) size on the final flow (and, with "
        "flow_advance, on each candidate's), used for the statistics and "
        "every signal (Magic Fixup: 15); null: off",
        unit="px",
        ge=3,
    )
    bidirectional: bool = knob(False, "also compute tgt -> src flow (flow_bwd.npy; better sketches)")
    chain: bool = knob(False, "chain flow over intermediate frames (forward, and backward for flow_bwd)")
    chain_mode: Literal["adaptive", "fixed"] = knob(
        "adaptive",
        "adaptive: hops planned from the motion (each covers about chain_step_px, as the flow_chain "
        "tracker's); fixed: chain_max_steps evenly spaced hops",
    )
    chain_max_steps: int = knob(
        8, "fixed chaining: hops between source and target; the frames decoded for adaptive chaining (+1)", ge=1
    )
    chain_step_px: float = knob(20.0, "adaptive chaining: motion covered by one hop", unit="px@dis", gt=0)
    chain_analysis_width: int = knob(
        160, "adaptive chaining: width of the motion profile that plans the hops", unit="px", ge=32
    )
    static_suppress: bool = knob(
        True,
        "zero the flow where source and target do not change (a static camera: "
        "what does not change does not move), keeping a narrow band of textured "
        "pixels around the change; flow noise and leaks on plain, still surfaces "
        "then put no drags, strokes or holes there",
    )
    rematch: bool = knob(
        True,
        "with static_suppress: a changed blob of the source that the flow lost (blur, a "
        "fast push, a moment hidden) is template-matched in the target, checked both ways, "
        "and given that move (stages/rematch.py); rotating, deforming or leaving objects "
        "keep their flow",
    )
    rematch_min_ncc: float = knob(0.8, "rematch: the normalised cross-correlation a match needs, both ways", ge=0, le=1)
    rematch_max_diff: Optional[float] = knob(
        20.0,
        "rematch: the mean absolute grey difference (0-255) a re-matched object may show against the "
        "target under its map; NCC ignores gain and offset, so a small blob also correlates with a "
        "look-alike shape of another colour far off (a red ball onto a white coat). null: not checked",
        ge=0,
    )
    rematch_turns: int = knob(
        12,
        "rematch: a blob not found as it stands is also looked for turned by each of this many equal "
        "steps of a full turn (an animal that turned round as it went); 1: translation only",
        ge=1,
    )
    fb_mask: bool = knob(
        True,
        "with flow_bwd: mark forward-backward inconsistent pixels (occlusions, lost "
        "motion); the coarse edit does not splat them, drags are not sampled there and the "
        "sketch fills them from their surroundings",
    )
    num_gpus: float = knob(
        0.0,
        "GPUs per flow actor in the Ray runner (fractions share a GPU); ignored by dis, which never asks for a GPU",
        ge=0,
    )
    num_cpus: float = knob(0.25, "logical CPUs per flow actor (it shares cores with the clip workers)", gt=0)
    actors: int = knob(1, "flow actor-pool size in the Ray runner", ge=1)

    def check(self, prefix: str = "flow") -> None:
        need(
            self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
            f"{prefix}.device",
            f"{self.device!r} is not one of auto, cpu, cuda, cuda:N",
        )
        need(
            self.median_filter_px is None or self.median_filter_px % 2 == 1,
            f"{prefix}.median_filter_px",
            f"must be odd, got {self.median_filter_px}",
        )
        if self.inference_size is not None:
            need(
                len(self.inference_size) == 2 and all(s % 8 == 0 for s in self.inference_size),
                f"{prefix}.inference_size",
                "must be [H, W], multiples of 8",
            )


def judge_dense_flow(name: str, p, it: PairItem, sc: dict, sig_fail: dict) -> None:
    """The dense flow's rules as a signal (``name``: ``flow`` or ``flow_bwd``; its
    :attr:`~vid2pair.core.stage.Signal.judge`): the quality stage's flow rules found it
    inconsistent or not explaining the change (``p.flow_verdict``); the signals made from it keep
    what of it holds, each judged by its own rules."""
    if p.flow_verdict is not None:
        sig_fail.setdefault(name, p.flow_verdict)


def preview_flow(a: dict) -> Optional[np.ndarray]:
    """A rejected pair's preview panel: the flow magnitude (viridis, scaled to its p99)."""
    if "flow" not in a:
        return None
    f = np.asarray(a["flow"], np.float32)
    mag = np.hypot(f[..., 0], f[..., 1])
    scale = float(np.percentile(mag, 99)) or 1.0
    return cv2.applyColorMap(np.clip(mag / scale * 255, 0, 255).astype(np.uint8), cv2.COLORMAP_VIRIDIS)[..., ::-1]


def draw_flow(v: PanelView) -> list[Panel]:
    """The flow's QC panel (its :attr:`~vid2pair.core.stage.Signal.draw`): the flow src -> tgt in colours."""
    flow = v.sample.array("flow")
    if flow is not None and flow.ndim == 3 and flow.shape[2] == 2:
        p90 = ((v.meta.get("flow") or {}).get("stats") or {}).get("p90")
        label = "flow src→tgt" + (f" (p90 {p90:.1f} px)" if p90 is not None else "")
        return [Panel("flow", label, v.disp(flow_to_rgb(flow)))]
    return [v.missing("flow", "flow src→tgt", "flow.npy", "flow")]


def _advance(it: PairItem) -> bool:
    """Is the pair's target still to be chosen by Magic Fixup's advance rule (the clip stage made it
    under ``pairs.policy: flow_advance``, with the candidate targets as its frames)?"""
    return it.meta.get("policy") == "flow_advance"


class FlowStage(PairStage):
    """Optical flow src -> tgt for a batch of pairs (a model stage: one backend per worker / actor).

    Reads ``arrays["frames"]`` (src, intermediate frames, tgt); writes ``src``, ``tgt``, ``flow``
    (and ``flow_bwd``, ``flow_valid``, ``flow_bwd_valid``) and ``meta["flow"]``; keeps ``frames``,
    and gives the re-matched pieces (``rematched``, ``rematched_src``), when a stage after it reads
    them. For a pair of ``pairs.policy: flow_advance`` (its ``meta["policy"]``) it also chooses the
    target (Magic Fixup's advance rule)."""

    name = "flow"
    sections = {"flow": FlowConfig}
    reads = ("frames",)
    provides = (
        "src",
        "tgt",
        "flow",
        "flow_bwd",
        "flow_valid",
        "flow_bwd_valid",
        "frames",
        "rematched",
        "rematched_src",
    )
    # flow.npy / flow_bwd.npy are written by the encoder from arrays["flow"] / ["flow_bwd"]
    signals = (
        Signal(
            "flow",
            ("flow.npy",),
            "output.flow",
            judge=partial(judge_dense_flow, "flow"),
            panels=("flow",),
            draw=draw_flow,
            preview=preview_flow,
            preview_rank=3,
        ),
        Signal("flow_bwd", ("flow_bwd.npy",), "flow.bidirectional", judge=partial(judge_dense_flow, "flow_bwd")),
    )

    @classmethod
    def frames_read(cls, cfg) -> int:
        return cfg.flow.chain_max_steps + 1 if cfg.flow.chain else 2

    @classmethod
    def resources(cls, cfg) -> Optional[Resources]:
        fl = cfg.flow
        if fl.backend == "dis":
            return None  # weight-free CPU flow: no model to hold, never a GPU; runs with the light stages
        return Resources(
            actors=fl.actors,
            num_gpus=fl.num_gpus,
            num_cpus=fl.num_cpus,
            batch_size=fl.batch_size,
            gpu_key="flow.num_gpus",
        )

    @classmethod
    def needs(cls, cfg) -> list[Need]:
        fl = cfg.flow
        if fl.backend == "dis":
            return []
        out = [Need("weights", fl.backend, f"flow.backend={fl.backend}", path=fl.weights, path_key="flow.weights")]
        if fl.backend.startswith("sea_raft"):
            out.append(Need("extra", "ptlflow", f"flow.backend={fl.backend}", extra="sea-raft"))
        return out

    def __init__(self, cfg):
        super().__init__(cfg)
        self._backend = None
        self._hop_dis = None
        self._profile_dis = None

    @property
    def backend(self):
        if self._backend is None:
            self._backend = make_flow_backend(self.cfg.flow)
        return self._backend

    def process(self, items: list[PairItem]) -> list[Item]:
        try:
            be = self.backend
        except Exception as e:  # missing weights / extra: every pair is recorded, the message says why
            return [pair_reject(it, "flow", "flow_backend_unavailable", str(e)[:500]) for it in items]
        res = {}
        direct = [it for it in items if not self._needs_sequence(it)]
        bs = self.cfg.flow.batch_size
        for k in range(0, len(direct), bs):  # direct src->tgt flow, batched across pairs
            chunk = direct[k : k + bs]
            try:
                src = np.stack([it.arrays["frames"][0] for it in chunk])
                tgt = np.stack([it.arrays["frames"][-1] for it in chunk])
                fwd = be(src, tgt)
                bwd = be(tgt, src) if self.cfg.flow.bidirectional else None
                for j, it in enumerate(chunk):
                    res[id(it)] = self._finish(it, fwd[j], None if bwd is None else bwd[j])
            except Exception as e:
                for it in chunk:
                    res[id(it)] = pair_reject(it, "flow", "flow_failed", f"{type(e).__name__}: {e}"[:500])
        out: list[Item] = []
        for it in items:
            if id(it) not in res:
                try:
                    res[id(it)] = self._sequence(it)
                except Exception as e:
                    res[id(it)] = pair_reject(it, "flow", "flow_failed", f"{type(e).__name__}: {e}"[:500])
            out.append(res[id(it)])
        return out

    def _needs_sequence(self, it: PairItem) -> bool:
        return it.arrays["frames"].shape[0] > 2 and (self.cfg.flow.chain or _advance(it))

    def _adaptive_chain(self, fr: np.ndarray) -> tuple[np.ndarray, Optional[np.ndarray], list]:
        """Forward (and, with ``flow.bidirectional``, backward) flow chained over hops planned from the
        motion (:func:`plan_hops`), as the flow_chain tracker does. DIS hops run at the finest pyramid
        level that keeps a 240-480 px working size and start from the planned initial flow; a model
        backend computes the hops itself (batched)."""
        fl = self.cfg.flow
        gray = [to_gray(f) for f in fr]
        h, w = gray[0].shape
        fs = auto_finest_scale(h, w)
        if self._profile_dis is None:
            self._profile_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[fl.dis_preset])
            self._profile_dis.setFinestScale(0)
            self._hop_dis = cv2.DISOpticalFlow_create(DIS_PRESETS[fl.dis_preset])
        hops, inits, _ = plan_hops(gray, fl.chain_step_px * 2**fs, fl.chain_analysis_width, self._profile_dis)
        if fl.backend == "dis":
            self._hop_dis.setFinestScale(int(fs))
            fwd = [dis_calc(self._hop_dis, gray[i], gray[j], init) for (i, j), init in zip(hops, inits)]
            bwd = (
                [dis_calc(self._hop_dis, gray[j], gray[i], invert_flow(f)) for (i, j), f in zip(hops, fwd)]
                if fl.bidirectional
                else None
            )
        else:
            a, b = [i for i, _ in hops], [j for _, j in hops]
            fwd = list(self.backend(fr[a], fr[b]))
            bwd = list(self.backend(fr[b], fr[a])) if fl.bidirectional else None
        f = fwd[0]
        for hop in fwd[1:]:
            f = compose_flows(f, hop)
        bk = None
        if bwd is not None:
            bk = bwd[-1]
            for hop in reversed(bwd[:-1]):
                bk = compose_flows(bk, hop)
        return f, bk, [[int(i), int(j)] for i, j in hops]

    def _sequence(self, it: PairItem) -> Item:
        """Chained flow over intermediate frames, or the flow_advance target search."""
        from vid2pair.stages.motion import flow_stats
        from vid2pair.stages.pairs import advance_select

        fr = it.arrays["frames"]
        advance = _advance(it)
        if not advance and self.cfg.flow.chain_mode == "adaptive":
            flow, bwd, hops = self._adaptive_chain(fr)
            it.meta["flow_hops"] = hops
            return self._finish(it, flow, bwd)
        sel = np.arange(len(fr)) if advance else chain_indices(len(fr), self.cfg.flow.chain_max_steps)
        hops = self.backend(fr[sel[:-1]], fr[sel[1:]])  # consecutive hops, batched
        acc = [hops[0]]
        for h in hops[1:]:
            acc.append(compose_flows(acc[-1], h))
        if advance:
            acc = [median_filter_flow(f, self.cfg.flow.median_filter_px) for f in acc]
            st = [flow_stats(f, 1.0, 1e9) for f in acc]
            k, why = advance_select([s["p90"] for s in st], [s["p95"] for s in st], it.meta.pop("advance_rule"))
            if k is None:
                return pair_reject(it, "pairs", "advance_rejected", why)
            tgt_frame = it.meta["frame_indices"][k + 1]
            fps = it.meta["fps"]
            it.meta.update(
                tgt_frame=tgt_frame,
                tgt_time=round(tgt_frame / fps, 6),
                dt=round(abs(tgt_frame - it.meta["src_frame"]) / fps, 6),
                advance_steps=k + 1,
                frame_indices=it.meta["frame_indices"][: k + 2],
            )
            it.key = pair_key(it.clip_id, it.meta["shot"], it.meta["src_frame"], tgt_frame)
            it.arrays["frames"] = fr[: k + 2]
            flow = acc[k]
        else:
            flow = acc[-1]
        fr = it.arrays["frames"]
        bwd = self.backend(fr[-1][None], fr[0][None])[0] if self.cfg.flow.bidirectional else None
        return self._finish(it, flow, bwd)

    def _finish(self, it: PairItem, flow, bwd) -> PairItem:
        from vid2pair.stages.evidence import fb_consistent, still_support

        fl = self.cfg.flow
        fr = it.arrays.pop("frames")
        it.meta.pop("advance_rule", None)  # (a sequence too short to advance)
        src, tgt = fr[0], fr[-1]
        flow = flow.astype(np.float32)
        bwd = None if bwd is None else bwd.astype(np.float32)
        if fl.median_filter_px and not _advance(it):  # (advance: filtered already)
            flow = median_filter_flow(flow, fl.median_filter_px)
            bwd = None if bwd is None else median_filter_flow(bwd, fl.median_filter_px)
        elif fl.median_filter_px and bwd is not None:
            bwd = median_filter_flow(bwd, fl.median_filter_px)
        info = {
            "backend": fl.backend,
            "version": getattr(self.backend, "version", ""),
            "chained": bool(fl.chain),
            "direction": "src->tgt",
            "bidirectional": bwd is not None,
        }
        if fl.chain:
            info["chain_mode"] = "advance" if _advance(it) else fl.chain_mode
        if "flow_hops" in it.meta:
            info["hops"] = it.meta.pop("flow_hops")
        if fl.static_suppress and np.isfinite(flow).all():
            # with a static camera, what does not change does not move: zero the flow there
            s = frame_scale(src.shape)
            moving = still_support(src, tgt)
            flow[~moving] = 0.0
            if bwd is not None:
                bwd[~moving] = 0.0
            info["static_suppressed_frac"] = round(float((~moving).mean()), 4)
            if fl.rematch:
                from vid2pair.stages.rematch import rematch_objects

                flow, bwd, done, pieces, rec = rematch_objects(
                    src,
                    tgt,
                    flow,
                    bwd,
                    sigma=1.5 * s,
                    close_px=max(1, round(6 * s)),
                    min_ncc=fl.rematch_min_ncc,
                    turns=fl.rematch_turns,
                    frames=fr,
                    max_diff=fl.rematch_max_diff,
                )
                if rec:
                    info["rematched"] = rec
                    if self.wants("rematched"):
                        it.arrays["rematched"] = done  # target pixels whose source the tracker takes from flow_bwd
                    if self.wants("rematched_src"):
                        it.arrays["rematched_src"] = pieces  # the collage cuts its segments along them
        it.arrays.update(src=src, tgt=tgt, flow=flow)
        if self.wants("frames"):
            it.arrays["frames"] = fr  # the tracker needs the frames in between (it drops them)
        if bwd is not None:
            it.arrays["flow_bwd"] = bwd
            if fl.fb_mask and np.isfinite(flow).all() and np.isfinite(bwd).all():
                vf, vb = fb_consistent(flow, bwd), fb_consistent(bwd, flow)
                it.arrays["flow_valid"], it.arrays["flow_bwd_valid"] = vf, vb
                info["fb_valid_frac"] = round(float(vf.mean()), 4)
        it.meta["flow"] = info
        return it
