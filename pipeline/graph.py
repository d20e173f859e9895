"""The whole pipeline on one screen.

    clip   (per clip, CPU)  probe -> shots -> static_camera -> pairs -> decode   -> PairItem | Reject
    flow   (batched, model) optical flow (direct, chained, or flow_advance)     -> PairItem | Reject
    motion (per pair, CPU)  magnitude statistics, min/max rules                 -> PairItem | Reject
    encode (per pair, CPU)  images, flow.npy and meta.json to tar-member bytes  -> PairItem

Every stage object is pure Python (arrays in, arrays and records out, no Ray). A runner
(``pipeline.runners``) wires them: in-process, or as Ray Data operators. Each clip ends with a
:class:`ClipDone` marker so the writer knows when a clip, and so a shard, is complete.
"""
from __future__ import annotations

import json
from typing import Iterable

import cv2
import numpy as np

from vid2pair import __version__
from vid2pair.core.items import ClipDone, ClipTask, Item, PairItem, Reject, clip_seed, pair_key
from vid2pair.stages import decode, motion, pairs, probe, shots, static_camera
from vid2pair.stages.base import PairStage, pair_reject


def _reject(task: ClipTask, stage: str, reason: str, detail: str = "", level: str = "clip", key: str = "") -> Reject:
    return Reject(source=task.source, clip_id=task.clip_id, chunk=task.chunk, clip_idx=task.clip_idx,
                  stage=stage, reason=reason, detail=detail, level=level, key=key)


def _versions() -> dict:
    import decord

    return {"vid2pair": __version__, "opencv": cv2.__version__, "decord": decord.__version__}


class ClipStage:
    """probe -> shots -> static camera -> pairs -> decode, for one clip, then the pair stages named
    in ``fused`` (the CPU stages before the first model stage, :func:`light_prefix`). With
    ``isolation.mode: process`` all of it runs in the isolation child: a crash or hang in decoding
    or in those stages loses that clip only, and the frames never cross the pipe (only encoded
    members do, when ``encode`` is fused)."""

    name = "clip"

    def __init__(self, cfg, fused: tuple = ()):
        self.cfg = cfg
        self.fused = tuple(fused)
        self._isolated = None
        self._fused_stages = None

    def close(self) -> None:
        if self._isolated is not None:
            self._isolated.close()
            self._isolated = None

    def __call__(self, task: ClipTask) -> list[Item]:
        if self.cfg.isolation.mode == "process":  # native decoding in a child: a crash loses one clip
            if self._isolated is None:
                from vid2pair.pipeline.isolation import IsolatedCall

                self._isolated = IsolatedCall(_clip_worker, (self.cfg, self.fused), self.cfg.isolation.clip_timeout_s)
            status, res = self._isolated.call(task)
        else:
            try:
                status, res = "ok", self.run_fused(task)
            except Exception as e:  # one bad video must never kill a job
                status, res = "error", f"{type(e).__name__}: {e}"
        reasons = {"crashed": "decoder_crashed", "timeout": "decode_timeout", "error": "decoder_error"}
        if status != "ok" and self.fused:
            res = f"{res} (decoding, then {', '.join(self.fused)})"
        items = res if status == "ok" else [_reject(task, "decode", reasons[status], str(res)[:500])]
        n = sum(isinstance(i, PairItem) for i in items)
        if n == 0 and not any(isinstance(i, Reject) for i in items):
            items.append(_reject(task, "pairs", "no_pairs", "no shot produced a pair"))
        return items + [ClipDone(source=task.source, clip_id=task.clip_id, chunk=task.chunk,
                                 clip_idx=task.clip_idx, n_items=len(items), info={"pairs": n})]

    def run_fused(self, task: ClipTask) -> list[Item]:
        """The un-isolated work: the clip stage, then the fused pair stages."""
        items = self._run(task)
        if self.fused:
            if self._fused_stages is None:
                by_name = {st.name: st for st in build_stages(self.cfg)[1]}
                self._fused_stages = [by_name[n] for n in self.fused]
            _stage_fault_injection(task)
            for st in self._fused_stages:
                items = st(items)
        return items

    def _run(self, task: ClipTask) -> list[Item]:
        from vid2pair.pipeline.storage import local_copy

        try:
            with local_copy(task.source) as path:  # objects in s3:// / gs:// are fetched to a temp file
                return self._run_local(task, path)
        except FileNotFoundError as e:
            return [_reject(task, "probe", "not_found", str(e)[:300])]

    def _run_local(self, task: ClipTask, path: str) -> list[Item]:
        cfg = self.cfg
        info, bad = probe.probe(path)
        if bad:
            return [_reject(task, "probe", *bad)]
        min_dur = cfg.probe.min_duration_s
        if min_dur is None:
            min_dur = max(pairs.min_duration_s(cfg.pairs), cfg.shots.min_shot_s)
        bad = probe.check_limits(info, cfg.probe.min_width, cfg.probe.min_height, min_dur)
        if bad:
            return [_reject(task, "probe", *bad)]

        # --- shots, on small frames decoded sequentially
        w, h = info.width, info.height
        sw, sh = decode.scaled_size(w, h, cfg.shots.analysis_width)
        small = decode.open_reader(path, sw, sh)
        n_index = len(small)
        fps = info.fps
        counter = decode.FrameCounter(small)
        cuts = shots.detect_cuts(counter, fps, cfg.shots.detector, cfg.shots.threshold,
                                 min_scene_len=max(1, int(round(cfg.shots.min_shot_s * fps / 2))))
        del small
        # frame counts from headers/indexes are not trusted: only what really decoded is used
        n_frames = counter.decoded
        self._counts = {"n_frames_header": info.n_frames, "n_frames_index": n_index,
                        "n_frames_decoded": n_frames, "decode_error": counter.error}
        if n_frames < 2:
            return [_reject(task, "decode", "too_few_frames",
                            f"decoded {n_frames} of {n_index} indexed frame(s) {counter.error}".strip())]
        kept, short = shots.shots_from_cuts(cuts, n_frames, fps, cfg.shots.min_shot_s, cfg.shots.trim_s)
        out: list[Item] = []
        shot_ids = {}
        all_shots = sorted([(a, b, None) for a, b in kept] + [(a, b, d) for a, b, d in short])
        for k, (a, b, d) in enumerate(all_shots):
            if d is not None:
                out.append(_reject(task, "shots", "shot_too_short", d, "shot", f"{task.clip_id}_s{k:03d}"))
            else:
                shot_ids[(a, b)] = k

        # --- static camera
        static = []
        aw, ah = decode.scaled_size(w, h, cfg.static_camera.analysis_width)
        ana = decode.open_reader(path, aw, ah) if cfg.static_camera.enabled else None
        for (a, b), k in shot_ids.items():
            score = {"score": 0.0, "tracked": True, "shifts": []}
            if ana is not None:
                fr = decode.read_frames(ana, static_camera.sample_indices(a, b, cfg.static_camera.samples))
                score = static_camera.camera_motion_score(fr, cfg.static_camera.min_inliers)
                if not score["tracked"]:
                    out.append(_reject(task, "static_camera", "camera_motion_unknown",
                                       f"too few trackable points (inliers {score['inliers']})", "shot",
                                       f"{task.clip_id}_s{k:03d}"))
                    continue
                if score["score"] > cfg.static_camera.max_shift:
                    out.append(_reject(task, "static_camera", "camera_moving",
                                       f"score {score['score']:.4f} > {cfg.static_camera.max_shift}", "shot",
                                       f"{task.clip_id}_s{k:03d}"))
                    continue
            static.append((k, a, b, score["score"]))
        del ana

        # --- pairs (seeded per clip and shot) and decode of just the frames needed
        ss = clip_seed(cfg.seed, task.clip_id)
        dw, dh = decode.decode_size(w, h, cfg.frame)
        reader = None
        for k, a, b, score in static:
            rng = np.random.default_rng(np.random.SeedSequence(ss.entropy, spawn_key=(k,)))
            specs, why = pairs.sample_pairs(a, b, fps, cfg.pairs, rng)
            if why:
                out.append(_reject(task, "pairs", "no_valid_pair", why, "shot", f"{task.clip_id}_s{k:03d}"))
                continue
            if reader is None:
                reader = decode.open_reader(path, dw, dh)
            for sp in specs:
                out.append(self._pair_item(task, reader, info, k, (a, b), score, sp))
        return out

    def _pair_item(self, task, reader, info, shot, rng_ab, score, sp: pairs.PairSpec) -> PairItem:
        cfg = self.cfg
        if sp.sequence:  # flow_advance: start + candidate targets
            idx = [sp.src] + list(sp.sequence)
        else:  # src, evenly spaced intermediate frames (for chained flow / the tracker), tgt
            n = 2
            if cfg.flow.chain:
                n = max(n, cfg.flow.chain_max_steps + 1)
            if cfg.track.enabled:
                n = max(n, cfg.track.max_frames)
            idx = list(dict.fromkeys(int(round(x)) for x in np.linspace(sp.src, sp.tgt, n)))
        frames = decode.apply_frame_policy(decode.read_frames(reader, idx), cfg.frame)
        fps = info.fps
        meta = {
            "source": task.source, "clip_id": task.clip_id, "shot": shot,
            "shot_range": list(rng_ab), "src_frame": sp.src, "tgt_frame": sp.tgt,
            "src_time": round(sp.src / fps, 6), "tgt_time": round(sp.tgt / fps, 6),
            "dt": round(abs(sp.tgt - sp.src) / fps, 6), "fps": fps, "reversed": sp.reversed,
            "frame_indices": idx, "orig_size": [info.width, info.height],
            "size": [int(frames.shape[2]), int(frames.shape[1])], "codec": info.codec,
            **{k: v for k, v in self._counts.items() if k != "decode_error"},
            "static_score": round(score, 6), "seed": cfg.seed, "policy": cfg.pairs.policy,
            "versions": _versions(),
        }
        return PairItem(key=pair_key(task.clip_id, shot, sp.src, sp.tgt), clip_id=task.clip_id,
                        source=task.source, chunk=task.chunk, clip_idx=task.clip_idx, meta=meta,
                        arrays={"frames": frames})


class FlowStage(PairStage):
    """Optical flow src->tgt for a batch of pairs (model stage: one backend per worker/actor)."""

    name = "flow"

    def __init__(self, cfg):
        self.cfg = cfg
        self._backend = None

    @property
    def backend(self):
        if self._backend is None:
            from vid2pair.stages.flow import make_flow_backend

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
            chunk = direct[k:k + bs]
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
        return it.arrays["frames"].shape[0] > 2 and (self.cfg.flow.chain or self.cfg.pairs.policy == "flow_advance")

    def _sequence(self, it: PairItem) -> Item:
        """Chained flow over intermediate frames, or the flow_advance target search."""
        from vid2pair.stages.flow import chain_indices, compose_flows

        fr = it.arrays["frames"]
        advance = self.cfg.pairs.policy == "flow_advance"
        sel = np.arange(len(fr)) if advance else chain_indices(len(fr), self.cfg.flow.chain_max_steps)
        hops = self.backend(fr[sel[:-1]], fr[sel[1:]])  # consecutive hops, batched
        acc = [hops[0]]
        for h in hops[1:]:
            acc.append(compose_flows(acc[-1], h))
        if advance:
            st = [motion.flow_stats(f, 1.0, 1e9) for f in acc]
            k, why = pairs.advance_select([s["p90"] for s in st], [s["p95"] for s in st], self.cfg.pairs)
            if k is None:
                return pair_reject(it, "pairs", "advance_rejected", why)
            tgt_frame = it.meta["frame_indices"][k + 1]
            fps = it.meta["fps"]
            it.meta.update(tgt_frame=tgt_frame, tgt_time=round(tgt_frame / fps, 6),
                           dt=round(abs(tgt_frame - it.meta["src_frame"]) / fps, 6), advance_steps=k + 1,
                           frame_indices=it.meta["frame_indices"][:k + 2])
            it.key = pair_key(it.clip_id, it.meta["shot"], it.meta["src_frame"], tgt_frame)
            it.arrays["frames"] = fr[:k + 2]
            flow = acc[k]
        else:
            flow = acc[-1]
        fr = it.arrays["frames"]
        bwd = self.backend(fr[-1][None], fr[0][None])[0] if self.cfg.flow.bidirectional else None
        return self._finish(it, flow, bwd)

    def _finish(self, it: PairItem, flow, bwd) -> PairItem:
        fr = it.arrays.pop("frames")
        it.arrays.update(src=fr[0], tgt=fr[-1], flow=flow.astype(np.float32))
        if self.cfg.track.enabled:
            it.arrays["frames"] = fr  # the tracker needs the frames in between (it drops them)
        if bwd is not None:
            it.arrays["flow_bwd"] = bwd.astype(np.float32)
        it.meta["flow"] = {"backend": self.cfg.flow.backend, "version": getattr(self.backend, "version", ""),
                           "chained": bool(self.cfg.flow.chain), "direction": "src->tgt",
                           "bidirectional": bwd is not None}
        return it


class MotionStage(PairStage):
    name = "motion"

    def __init__(self, cfg):
        self.cfg = cfg

    def one(self, it: PairItem) -> Item:
        flow = it.arrays["flow"]
        bad_px = int((~np.isfinite(flow)).any(axis=-1).sum())
        if bad_px:  # NaN / inf compare False against every threshold: catch them here, by name
            return pair_reject(it, "motion", "invalid_flow", f"{bad_px} of {flow.shape[0] * flow.shape[1]} "
                                                             f"pixels have non-finite flow")
        st = motion.motion_stats(flow, self.cfg.motion)
        it.meta["flow"]["stats"] = {k: round(v, 5) for k, v in st.items()}
        bad = motion.motion_verdict(st, min(flow.shape[:2]), self.cfg.motion)
        if bad:
            return pair_reject(it, "motion", *bad)
        return it


def encode_image(img: np.ndarray, fmt: str, quality: int) -> bytes:
    """RGB (H,W,3) or single-channel (H,W) uint8 -> encoded bytes."""
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR) if img.ndim == 3 and img.shape[2] == 3 else img
    params = []
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, quality]
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise RuntimeError(f"could not encode image as {fmt}")
    return buf.tobytes()


def encode_npy(arr: np.ndarray) -> bytes:
    import io

    b = io.BytesIO()
    np.save(b, arr, allow_pickle=False)
    return b.getvalue()


# arrays written as lossless PNG (images and masks), as .npy, and meta entries written as their own JSON
PNG_MEMBERS = ("sketch", "coarse", "coarse_mask", "collage", "collage_mask", "drag_mask", "region_masks")
NPY_MEMBERS = ("tracks", "visibility")
JSON_MEMBERS = ("drag", "region_drag")


class EncodeStage(PairStage):
    """Arrays -> tar member bytes: src/tgt images, signal PNGs, .npy arrays, JSON, meta.json."""

    name = "encode"

    def __init__(self, cfg):
        self.cfg = cfg

    def one(self, it: PairItem) -> Item:
        o = self.cfg.output
        a = it.arrays
        files = {f"src.{o.image_format}": encode_image(a["src"], o.image_format, o.jpeg_quality),
                 f"tgt.{o.image_format}": encode_image(a["tgt"], o.image_format, o.jpeg_quality)}
        if o.flow != "none":
            files["flow.npy"] = encode_npy(a["flow"].astype(o.flow))
            if "flow_bwd" in a:
                files["flow_bwd.npy"] = encode_npy(a["flow_bwd"].astype(o.flow))
        for name in PNG_MEMBERS:
            if name in a:
                files[f"{name}.png"] = encode_image(a[name], "png", 0)
        for name in NPY_MEMBERS:
            if name in a:
                files[f"{name}.npy"] = encode_npy(a[name])
        for name in JSON_MEMBERS:
            if name in it.meta:
                files[f"{name}.json"] = json.dumps(it.meta.pop(name), sort_keys=True).encode()
        it.meta["key"] = it.key
        it.meta["files"] = sorted(files) + ["meta.json"]
        files["meta.json"] = json.dumps(it.meta, sort_keys=True).encode()
        it.files, it.arrays = files, {}
        return it


def _clip_worker(cfg, fused: tuple = ()):
    """Factory run inside the isolation child: the un-isolated clip work (and the fused stages)."""
    return ClipStage(cfg, fused).run_fused


def _stage_fault_injection(task: ClipTask) -> None:
    """Test hook (never set in production): ``VID2PAIR_FAULT=crash_stages:<substring>`` aborts the
    process after decoding, in the fused pair stages, for sources containing ``<substring>``."""
    import os

    kind, _, needle = os.environ.get("VID2PAIR_FAULT", "").partition(":")
    if kind == "crash_stages" and needle and needle in task.source:
        os.abort()


def light_prefix(cfg, names: Iterable[str]) -> tuple:
    """The pair stages before the first model stage (none holds a model or a GPU): the runners run
    them together with the clip stage (:class:`ClipStage` ``fused``)."""
    out = []
    for n in names:
        if model_stage_options(cfg, n) is not None:
            break
        out.append(n)
    return tuple(out)


def model_stage_options(cfg, name: str):
    """Ray actor-pool options for stages that hold a model (None: a light stage, run as tasks)."""
    if name == "flow":
        if cfg.flow.backend == "dis" and not cfg.flow.num_gpus:
            return None  # weight-free CPU flow: no model to hold, runs with the light stages
        return dict(size=cfg.flow.actors, num_gpus=cfg.flow.num_gpus, num_cpus=cfg.flow.num_cpus,
                    batch_size=cfg.flow.batch_size)
    if name == "track" and cfg.track.backend != "flow_chain":
        return dict(size=1, num_gpus=cfg.track.num_gpus, num_cpus=0.25, batch_size=cfg.track.batch_size)
    if name == "collage" and (cfg.collage.segmenter == "sam" or cfg.collage.depth == "dpt"):
        return dict(size=1, num_gpus=cfg.collage.num_gpus, num_cpus=0.25, batch_size=2)
    return None


def build_stages(cfg) -> tuple[ClipStage, list[PairStage]]:
    """The pipeline: one clip stage, then the pair stages in order (disabled signals are skipped)."""
    from vid2pair.stages.coarse import CoarseStage
    from vid2pair.stages.collage import CollageStage
    from vid2pair.stages.sketch import SketchStage
    from vid2pair.stages.track import TrackStage

    signals = [(cfg.track.enabled, TrackStage), (cfg.sketch.enabled, SketchStage),
               (cfg.coarse.enabled, CoarseStage), (cfg.collage.enabled, CollageStage)]
    return ClipStage(cfg), [FlowStage(cfg), MotionStage(cfg), *[S(cfg) for on, S in signals if on],
                            EncodeStage(cfg)]


def run_items(clip_stage: ClipStage, pair_stages: Iterable[PairStage], task: ClipTask) -> list[Item]:
    """All stages for one clip, in process (the local runner's unit of work)."""
    items = clip_stage(task)
    for st in pair_stages:
        items = st(items)
    return items
