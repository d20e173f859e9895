"""clip: one input clip -> candidate pairs with their decoded frames (probe, shots, static camera,
pairs, decode), or rejects naming the step that dropped the clip, a shot or a pair.

Pure: a :class:`~vid2pair.core.items.ClipTask` in, items out, no Ray, no child processes (the
runners add isolation around it). ``opener`` turns a source into a local path (the runners pass
the object-store fetcher); ``report(step)`` is told each step as it starts, so a crash can be
attributed to the step that was running.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from typing import Any, Callable, ContextManager, Iterator, Optional

import cv2
import numpy as np

from vid2pair import __version__
from vid2pair.core.items import SHOTS_PER_UNIT, ClipTask, Item, PairItem, Reject, pair_key
from vid2pair.core.seeding import rng_for
from vid2pair.core.stage import Stage
from vid2pair.stages import decode, pairs, probe, shots, static_camera

__all__ = ["ClipStage", "clip_reject", "CLIP_STEPS"]

#: the steps of the clip stage, in order (each can name a reject or a crash)
CLIP_STEPS = ("probe", "shots", "static_camera", "pairs", "decode")


def clip_reject(
    task: ClipTask, stage: str, reason: str, detail: str = "", level: str = "clip", key: str = ""
) -> Reject:
    """A reject of the clip (or of a shot / pair of it). A split clip's unit rejects only its span:
    level ``unit``, keyed ``<clip_id>_uNNN`` (the clip is accounted as a whole by its source)."""
    if level == "clip" and task.split:
        level, key = "unit", key or task.unit_key
    return Reject(
        source=task.source,
        clip_id=task.clip_id,
        chunk=task.chunk,
        clip_idx=task.clip_idx,
        stage=stage,
        reason=reason,
        detail=detail,
        level=level,
        key=key,
    )


def _versions() -> dict:
    import av

    return {
        "vid2pair": __version__,
        "opencv": cv2.__version__,
        "av": av.__version__,
        "libavcodec": ".".join(map(str, av.library_versions["libavcodec"])),
    }


def _ffmpeg_errors(video) -> str:
    return f"{video.errors} FFmpeg error line(s), the last: {video.last_error}" if video.errors else ""


def _local(path: str) -> ContextManager[str]:
    return contextlib.nullcontext(path)


class ClipStage(Stage):
    """probe -> shots -> static camera -> pairs -> decode, for one clip."""

    name = "clip"
    provides = ("frames",)
    sections = {
        "probe": probe.ProbeConfig,
        "shots": shots.ShotsConfig,
        "static_camera": static_camera.StaticCameraConfig,
        "pairs": pairs.PairsConfig,
        "frame": decode.FrameConfig,
    }

    @classmethod
    def enabled(cls, cfg) -> bool:
        return True

    def __init__(self, cfg: Any, opener: Callable[[str], ContextManager[str]] = _local, frames: int = 2):
        self.cfg = cfg
        self.opener = opener
        #: frames per pair, source to target evenly spaced: the most any enabled stage reads
        #: (:meth:`~vid2pair.core.stage.Stage.frames_read`; the plan gives it)
        self.frames = max(2, int(frames))
        #: pairs per shot that the stages run with the decoder rejected (:meth:`rejected_one`); each
        #: lets the shot draw one spare candidate (``pairs.oversample``)
        self.rejected: Counter = Counter()
        #: what the last clip's decoding met (FFmpeg errors, re-reads), for its ClipDone and summary.json
        self.info: dict = {}

    def rejected_one(self, it: PairItem) -> None:
        """The consumer's word that pair ``it`` (and its retries) did not come through the stages that
        run with the decoder: a spare candidate may replace it. A consumer that never says so gets
        ``pairs.per_shot`` candidates a shot, as without spares."""
        self.rejected[it.meta.get("shot")] += 1

    def __call__(self, task: ClipTask, report: Optional[Callable[[str], None]] = None) -> list[Item]:
        return list(self.iter_items(task, report))

    def iter_items(self, task: ClipTask, report: Optional[Callable[[str], None]] = None) -> Iterator[Item]:
        """The clip's items one at a time: each candidate pair's frames are decoded only when the
        consumer asks for it, so whoever runs the pair stages per item holds one pair's frames at a
        time, however many shots and pairs the clip has."""
        self._report = report or (lambda step: None)
        self.rejected = Counter()
        self.info = {}
        self._report("probe")
        try:
            with self.opener(task.source) as path:  # objects in s3:// / gs:// are fetched to a temp file
                yield from self._run(task, path)
        except FileNotFoundError as e:
            yield clip_reject(task, "probe", "not_found", str(e)[:300])

    def _run(self, task: ClipTask, path: str) -> Iterator[Item]:
        cfg = self.cfg
        info, bad = probe.probe(path)
        if bad:
            yield clip_reject(task, "probe", *bad)
            return
        min_dur = cfg.probe.min_duration_s
        if min_dur is None:
            min_dur = max(pairs.min_duration_s(cfg.pairs), cfg.shots.min_shot_s)
        bad = probe.check_limits(info, cfg.probe.min_width, cfg.probe.min_height, min_dur)
        if bad:
            yield clip_reject(task, "probe", *bad)
            return

        # --- shots, on small frames of the one in-order scan of the unit's span [first, stop) of a
        # split clip (all of it otherwise); the scan also fingerprints every frame (decode.Video)
        self._report("shots")
        w, h = info.width, info.height
        sw, sh = decode.scaled_size(w, h, cfg.shots.analysis_width)
        fps = info.fps
        first = int(round(task.start_s * fps)) if task.split else 0
        stop = int(round(task.end_s * fps)) if task.split and task.end_s > 0 else None
        try:
            video = decode.Video(path)
        except decode.DecodeError as e:
            yield clip_reject(task, "decode", "decoder_error", str(e)[:500])
            return
        try:
            yield from self._shots_and_pairs(task, info, video, first, stop, (sw, sh))
        finally:
            self.info = {"decode": video.summary(), "footage": video.footage()}
            video.close()

    def _shots_and_pairs(
        self, task: ClipTask, info, video: decode.Video, first: int, stop: Optional[int], scan_size: tuple[int, int]
    ) -> Iterator[Item]:
        cfg = self.cfg
        fps, w, h = info.fps, info.width, info.height
        screens: list = []  # the pre-screen's 128-px view of every scanned frame (pairs.prescreen)

        def scanned():
            for i, small in video.scan(first, stop, scan_size):
                if cfg.pairs.prescreen:
                    screens.append(np.rint(pairs.screen_frame(small)).astype(np.uint8))
                yield i, small

        cuts = shots.detect_cuts(
            scanned(),
            fps,
            cfg.shots.detector,
            cfg.shots.threshold,
            min_scene_len=max(1, int(round(cfg.shots.min_shot_s * fps / 2))),
        )
        # frame counts from headers are not trusted: only what really decoded is used
        n_frames = video.n_frames
        if n_frames - first < 2:
            what = f"of frames {first}-{stop if stop is not None else 'end'}" if task.split else "frame(s)"
            why = "; ".join(x for x in (video.error, _ffmpeg_errors(video)) if x)
            yield clip_reject(
                task,
                "decode",
                "too_few_frames",
                f"decoded {n_frames - first} {what} (the header says {info.n_frames} frames)"
                + (f": {why}" if why else ""),
            )
            return
        self._counts = {"n_frames_header": info.n_frames, "n_frames_decoded": n_frames, "decoder": "pyav"}
        if task.split:
            self._counts["unit"] = [task.unit, task.units]
            self._counts["unit_frames"] = [first, n_frames]
        kept, short = shots.shots_from_cuts(cuts, n_frames, fps, cfg.shots.min_shot_s, cfg.shots.trim_s, first)
        shot_ids = {}
        all_shots = sorted([(a, b, None) for a, b in kept] + [(a, b, d) for a, b, d in short])
        if len(all_shots) > SHOTS_PER_UNIT:
            yield clip_reject(
                task,
                "shots",
                "too_many_shots",
                f"{len(all_shots)} shots > {SHOTS_PER_UNIT} in one work unit; lower input.unit_s",
            )
            return
        for k, (a, b, d) in enumerate(all_shots, start=task.shot_base):
            if d is not None:
                yield clip_reject(task, "shots", "shot_too_short", d, "shot", f"{task.clip_id}_s{k:03d}")
            else:
                shot_ids[(a, b)] = k

        # --- static camera
        self._report("static_camera")
        static = []
        aw, ah = decode.scaled_size(w, h, cfg.static_camera.analysis_width)
        for (a, b), k in shot_ids.items():
            score = {"score": 0.0, "tracked": True, "shifts": []}
            if cfg.static_camera.enabled:
                try:
                    fr = video.read(static_camera.sample_indices(a, b, cfg.static_camera.samples), (aw, ah))
                except decode.InexactFrame as e:
                    yield clip_reject(
                        task, "decode", "decode_inexact", str(e)[:500], "shot", f"{task.clip_id}_s{k:03d}"
                    )
                    continue
                score = static_camera.camera_motion_score(fr, cfg.static_camera.min_inliers)
                if not score["tracked"]:
                    yield clip_reject(
                        task,
                        "static_camera",
                        "camera_motion_unknown",
                        f"too few trackable points (inliers {score['inliers']})",
                        "shot",
                        f"{task.clip_id}_s{k:03d}",
                    )
                    continue
                if score["score"] > cfg.static_camera.max_shift:
                    yield clip_reject(
                        task,
                        "static_camera",
                        "camera_moving",
                        f"score {score['score']:.4f} > {cfg.static_camera.max_shift}",
                        "shot",
                        f"{task.clip_id}_s{k:03d}",
                    )
                    continue
            static.append((k, a, b, score["score"]))

        # --- pairs (seeded per clip and shot) and decode of just the frames needed
        self._report("pairs")
        dsize = decode.decode_size(w, h, cfg.frame)

        def keep(i: int, j: int) -> bool:  # the pre-screen: a visible, local change between frames i and j
            return pairs.screen_pair(
                screens[i - first].astype(np.float32), screens[j - first].astype(np.float32), cfg.pairs
            )[0]

        for k, a, b, score in static:
            specs, why = pairs.sample_pairs(
                a, b, fps, cfg.pairs, rng_for(cfg.seed, task.clip_id, "shot", k), keep=keep if screens else None
            )
            if why:
                reason = "no_visible_change" if "pairs.prescreen" in why else "no_valid_pair"
                yield clip_reject(task, "pairs", reason, why, "shot", f"{task.clip_id}_s{k:03d}")
                continue
            for n, sp in enumerate(specs):
                if n - self.rejected[k] >= cfg.pairs.per_shot:
                    break  # per_shot came through (or are on their way): spares only replace rejected pairs
                self._report("decode")  # again for each pair: the consumer reports its own steps between items
                try:
                    yield self._pair_item(task, video, dsize, info, k, (a, b), score, sp)
                except decode.InexactFrame as e:
                    self.rejected[k] += 1  # a spare may replace it
                    yield clip_reject(
                        task,
                        "decode",
                        "decode_inexact",
                        str(e)[:500],
                        "pair",
                        pair_key(task.clip_id, k, sp.src, sp.tgt),
                    )

    def retries(self, reject: Reject) -> bool:
        """Whether a pair rejected so is tried again at a shorter gap (:meth:`retry_item`): a pair-level
        reject for motion the estimates cannot follow (:data:`pairs.RETRY_REASONS`)."""
        return reject.level == "pair" and reject.reason in pairs.RETRY_REASONS

    def retry_item(self, it: PairItem, meta: dict, frames) -> Optional[PairItem]:
        """The retry of pair ``it`` (as this stage made it: ``meta``, decoded as ``frames``) at a shorter
        gap, from the same frames (:func:`pairs.shorter_target`), keyed ``<key>_r<n>``; None when it has
        no shorter gap left."""
        m = meta
        if m.get("retry", 0) >= self.cfg.pairs.retry_shorter or "advance_guess" in m:
            return None
        j = pairs.shorter_target(m["frame_indices"], m["fps"], self.cfg.pairs)
        if j is None:
            return None
        idx = m["frame_indices"][: j + 1]
        fps = m["fps"]
        meta = {
            **m,
            "tgt_frame": idx[-1],
            "tgt_time": round(idx[-1] / fps, 6),
            "dt": round(abs(idx[-1] - idx[0]) / fps, 6),
            "frame_indices": idx,
            "retry": m.get("retry", 0) + 1,
            "retry_of": m.get("retry_of", it.key),
        }
        key = f"{meta['retry_of']}_r{meta['retry']}"
        return PairItem(
            key=key,
            clip_id=it.clip_id,
            source=it.source,
            chunk=it.chunk,
            clip_idx=it.clip_idx,
            meta=meta,
            arrays={"frames": frames[: j + 1]},
        )

    def _pair_item(self, task, video: decode.Video, dsize, info, shot, rng_ab, score, sp: pairs.PairSpec) -> PairItem:
        cfg = self.cfg
        if sp.sequence:  # flow_advance: start + candidate targets
            idx = [sp.src] + list(sp.sequence)
        else:  # src, evenly spaced intermediate frames (for chained flow / the tracker), tgt
            idx = list(dict.fromkeys(int(round(x)) for x in np.linspace(sp.src, sp.tgt, self.frames)))
        frames = decode.apply_frame_policy(video.read(idx, dsize), cfg.frame)
        fps = info.fps
        meta = {
            "source": task.source,
            "clip_id": task.clip_id,
            "shot": shot,
            "shot_range": list(rng_ab),
            "src_frame": sp.src,
            "tgt_frame": sp.tgt,
            "src_time": round(sp.src / fps, 6),
            "tgt_time": round(sp.tgt / fps, 6),
            "dt": round(abs(sp.tgt - sp.src) / fps, 6),
            "fps": fps,
            "reversed": sp.reversed,
            "frame_indices": idx,
            "orig_size": [info.width, info.height],
            "size": [int(frames.shape[2]), int(frames.shape[1])],
            "codec": info.codec,
            **self._counts,
            "decode": {k: v for k, v in video.summary().items() if k in ("errors", "rereads")},
            "static_score": round(score, 6),
            "seed": cfg.seed,
            "policy": cfg.pairs.policy,
            "versions": _versions(),
        }
        if sp.sequence:
            meta["advance_guess"] = sp.guess
            meta["advance_rule"] = pairs.advance_rule(cfg.pairs)  # the flow stage applies it (and drops it)
        return PairItem(
            key=pair_key(task.clip_id, shot, sp.src, sp.tgt),
            clip_id=task.clip_id,
            source=task.source,
            chunk=task.chunk,
            clip_idx=task.clip_idx,
            meta=meta,
            arrays={"frames": frames},
        )
