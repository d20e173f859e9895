"""WebDataset input pipeline for vid2pair shards.

One :class:`PairStream` per process (an ``IterableDataset``) turns shard specs into decoded, batched
tensors:

    shard list (expanded specs; shuffled per epoch, or wds.ResampledShards)
      -> split by node (rank) and DataLoader worker; sample-level split when there are fewer
         shards than consumers, so every rank always gets data
      -> wds tar reading (only the members the task needs are read)
      -> train / eval split: the index's split column when the build marked one (output.eval_frac,
         whole clips), else by key hash: sha1(key) mod 1000 < eval_permille is eval; never trained on
      -> seeded shuffle buffer (raw bytes, before decoding)
      -> [resume: skip the raw samples this worker already delivered]
      -> decode + resize (cover + centre crop) to the model resolution; the signal the task needs
      -> batches (collated in the worker)

Everything random is seeded from (seed, epoch, consumer) or (seed, epoch, key), so a run is
reproducible and a resumed run sees the same batches as an uninterrupted one.

Errors: a sample without a member the task needs raises :class:`DataError` naming the shard, the
key and the member; an unreadable / truncated shard raises naming the shard. With
``data.on_error: skip`` both are skipped, counted (``batch["_skipped"]``) and logged instead.
"""

from __future__ import annotations

import glob
import io
import itertools
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from vid2pair.core.seeding import derive_seed
from vid2pair.core.split import bucket
from vid2pair.stages.drag import drag_raster  # noqa: F401  (the drag task's raster; re-exported)

log = logging.getLogger("vid2pair.trainer.data")

IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")


class DataError(RuntimeError):
    """A shard or sample cannot be used. The message names the shard (and the sample / member)."""


# --------------------------------------------------------------------------- shard specs


def _is_url(s: str) -> bool:
    return s.startswith("pipe:") or "://" in s


def expand_shards(specs, s3_command: str = "aws s3 cp {url} -") -> list[str]:
    """Expand shard specs into a list of URLs / paths (order kept, duplicates dropped).

    * brace lists (``pairs-{000000..000099}.tar``) via webdataset's expansion, ``::`` separates specs;
    * local globs (``/data/*/shards/*.tar``), directories (their ``*.tar``; a vid2pair output
      directory: its ``shards/*.tar``), plain paths (must exist);
    * ``pipe:CMD``, ``http(s)://``, ``gs://`` ... are passed to webdataset's ``gopen``;
      ``s3://`` becomes ``pipe:`` + ``s3_command``.
    """
    from webdataset.shardlists import expand_urls

    if isinstance(specs, str):
        specs = [specs]
    out: list[str] = []
    for spec in specs:
        for item in expand_urls(str(spec)):
            if item.startswith("s3://"):
                out.append("pipe:" + s3_command.format(url=item))
            elif _is_url(item):
                out.append(item)
            elif any(ch in item for ch in "*?["):
                hits = sorted(glob.glob(os.path.expanduser(item), recursive=True))
                hits = [h for h in hits if h.endswith(".tar")]
                if not hits:
                    raise DataError(f"shard spec {item!r} matches no .tar file")
                out.extend(hits)
            else:
                p = Path(item).expanduser()
                if p.is_dir():
                    d = p / "shards" if (p / "shards").is_dir() else p
                    hits = sorted(str(x) for x in d.glob("*.tar"))
                    if not hits:
                        raise DataError(f"shard directory {d} holds no .tar file")
                    out.extend(hits)
                elif p.is_file():
                    out.append(str(p))
                else:
                    raise DataError(
                        f"shard {item!r} does not exist (build a dataset with `vid2pair build` or "
                        f"`vid2pair demo`, or point data.train / data.eval at one)"
                    )
    seen: set = set()
    return [u for u in out if not (u in seen or seen.add(u))]


_KEY_RE = re.compile(r"^(?P<clip>.+)_s\d+_f\d+_f\d+$")


def clip_of_key(key: str) -> str:
    """The clip id of a vid2pair sample key ``{clip_id}_s{shot}_f{src}_f{tgt}`` (the key itself if
    it does not have that form)."""
    m = _KEY_RE.match(key)
    return m.group("clip") if m else key


def key_bucket(key: str, by: str = "key") -> int:
    """Deterministic bucket in [0, 1000) of a sample key, or of its clip id with ``by="clip"``
    (sha1, independent of PYTHONHASHSEED; the buckets ``output.eval_frac`` draws the index's split
    from: :mod:`vid2pair.core.split`)."""
    return bucket(clip_of_key(key) if by == "clip" else key)


def index_eval_keys(urls: list[str]) -> Optional[frozenset]:
    """The keys the builds' indexes mark ``split == "eval"`` (``output.eval_frac``), for the local
    shards in ``urls`` (the index of ``<out>/shards/x.tar`` is ``<out>/index``). None when no index
    there has an eval split: the trainer then splits by ``data.eval_permille``."""
    import pyarrow.parquet as pq

    dirs = {Path(u).resolve().parent.parent / "index" for u in urls if not _is_url(u)}
    keys: set = set()
    found = False
    for d in sorted(dirs):
        for part in sorted(d.glob("*.parquet")):
            t = pq.read_table(part, columns=None)
            if "split" not in t.column_names:
                continue
            for k, sp in zip(t.column("key").to_pylist(), t.column("split").to_pylist()):
                if sp == "eval":
                    keys.add(k)
                    found = True
    return frozenset(keys) if found else None


def is_eval_key(key: str, eval_permille: int, by: str = "key") -> bool:
    return key_bucket(key, by) < eval_permille


_seed = derive_seed  # the one seeding scheme (vid2pair.core.seeding)


# --------------------------------------------------------------------------- decoding


@dataclass
class SampleSpec:
    """What the decoder produces (filled from the config and the model)."""

    task: str
    resolution: tuple[int, int]  # (H, W)
    match_grids: list = field(default_factory=list)  # [(h, w)] token grids that need correspondences
    drag_min_points: int = 1
    drag_max_points: int = 16
    drag_sigma_px: float = 1.5
    seed: int = 0
    random_drag: bool = True  # train: draw a random subset of drag points per sample; eval: the first ones

    def required(self) -> list[str]:
        """Members (by extension, images: any format) a sample must have: the source and target, the
        members of the task's signal and, for matching attention, of the tracks (as the pipeline's
        stages declare them)."""
        req = ["src.*", "tgt.*", *self.signal().members]
        if self.match_grids:
            req += list(match_signal().members)
        return req

    def signal(self):
        """The signal this task trains on (its members and its :attr:`~vid2pair.core.stage.Signal.train`)."""
        from vid2pair.pipeline.plan import trainer_task

        return trainer_task(self.task)

    def signals_needed(self) -> list[str]:
        """The pipeline signals a sample must carry for this task (and its matching supervision)."""
        return [self.task] + ([match_signal().name] if self.match_grids else [])

    def carries(self, raw: dict) -> bool:
        """Whether a raw sample carries the signals this task trains on, by its meta.json ``signals``
        list (the pipeline's quality stage drops a failing signal and keeps the pair for the others).
        Outputs without that list are taken to carry everything (missing members then raise)."""
        data = raw.get("meta.json")
        if data is None:
            return True
        try:
            sigs = json.loads(data).get("signals")
        except (ValueError, AttributeError):
            return True  # decode_sample reports the broken meta
        return sigs is None or all(s in sigs for s in self.signals_needed())

    def wanted_member(self, name: str) -> bool:
        """Tar members worth reading (the rest, e.g. flow.npy, is skipped without loading)."""
        if name.endswith("meta.json") and (name == "meta.json" or name.endswith(".meta.json")):
            return True
        ext = name.split(".", 1)[1] if "." in name else ""
        for r in self.required():
            stem, rext = r.split(".", 1)
            if rext == "*" and ext.startswith(stem + ".") and ext.split(".", 1)[1] in IMAGE_EXTS:
                return True
            if ext == r:
                return True
        return False


def _member(raw: dict, want: str) -> Optional[str]:
    stem, ext = want.split(".", 1)
    if ext != "*":
        return want if want in raw else None
    for e in IMAGE_EXTS:
        if f"{stem}.{e}" in raw:
            return f"{stem}.{e}"
    return None


class _Fit:
    """Cover-resize + centre-crop of a (w0, h0) image to (W, H), and the same map for points."""

    def __init__(self, w0: int, h0: int, W: int, H: int):
        s = max(W / w0, H / h0)
        self.nw, self.nh = max(W, round(w0 * s)), max(H, round(h0 * s))
        self.sx, self.sy = self.nw / w0, self.nh / h0
        self.ox, self.oy = (self.nw - W) // 2, (self.nh - H) // 2
        self.W, self.H, self.w0, self.h0 = W, H, w0, h0

    def image(self, img, resample):
        if (img.width, img.height) != (self.w0, self.h0):
            raise ValueError(f"size {img.width}x{img.height} differs from src {self.w0}x{self.h0}")
        if (self.nw, self.nh) != (img.width, img.height):
            img = img.resize((self.nw, self.nh), resample)
        return img.crop((self.ox, self.oy, self.ox + self.W, self.oy + self.H))

    def points(self, xy: np.ndarray) -> np.ndarray:
        xy = np.asarray(xy, np.float64).reshape(-1, 2)
        return np.stack(
            [(xy[:, 0] + 0.5) * self.sx - 0.5 - self.ox, (xy[:, 1] + 0.5) * self.sy - 0.5 - self.oy], axis=1
        )


def _to_tensor(img, signed: bool) -> torch.Tensor:
    return torch.from_numpy(_to_array(img, signed))


def _to_array(img, signed: bool) -> np.ndarray:
    """A PIL image -> (C, H, W) float32: [-1, 1] when ``signed``, else [0, 1]."""
    a = np.asarray(img, np.float32) / 255.0
    if a.ndim == 2:
        a = a[:, :, None]
    a = np.ascontiguousarray(a.transpose(2, 0, 1))
    return a * 2.0 - 1.0 if signed else a


def match_signal():
    """The signal that gives matching attention its correspondences (:attr:`Signal.matches`: the tracks)."""
    from vid2pair.pipeline.plan import current_stages, signals

    sigs = [g for g in signals(current_stages()).values() if g.matches is not None]
    if not sigs:
        raise DataError("no signal of the pipeline gives correspondences (Signal.matches) for matching attention")
    return sigs[0]


class SampleReader:
    """What a signal's trainer input (:attr:`vid2pair.core.stage.Signal.train`) reads a raw sample
    with, at the model resolution (cover-resize + centre crop, like the source):

    * ``image(member, rgb)``: (3, H, W) in [-1, 1] (bicubic) when ``rgb``, else (1, H, W) grey in
      [0, 1] (box filter: masks and strokes);
    * ``json(member)``; ``points(xy)``: stored-image pixels -> model pixels;
    * ``size``: (H, W); ``spec``: the :class:`SampleSpec`; ``rng(salt)``: a ``random.Random`` seeded
      by (seed, epoch, key, salt).
    """

    def __init__(self, raw: dict, fit: "_Fit", spec: "SampleSpec", epoch: int, key: str):
        self.raw, self.fit, self.spec, self.epoch, self.key = raw, fit, spec, epoch, key
        self.size = spec.resolution
        self.current = ""  # the member being read (named when it cannot be decoded)

    def image(self, member: str, rgb: bool) -> np.ndarray:
        from PIL import Image

        self.current = member
        img = Image.open(io.BytesIO(self.raw[member])).convert("RGB" if rgb else "L")
        return _to_array(self.fit.image(img, Image.BICUBIC if rgb else Image.BOX), rgb)

    def json(self, member: str):
        self.current = member
        return json.loads(self.raw[member])

    def array(self, member: str) -> np.ndarray:
        self.current = member
        return np.load(io.BytesIO(self.raw[member]), allow_pickle=False)

    def points(self, xy) -> np.ndarray:
        return self.fit.points(xy)

    def rng(self, salt: str) -> random.Random:
        return random.Random(_seed(self.spec.seed, self.epoch, self.key, salt))


def decode_sample(raw: dict, spec: SampleSpec, epoch: int = 0) -> dict:
    """Raw tar sample (member -> bytes) -> tensors at the model resolution.

    Keys: ``src``, ``tgt`` (3, H, W) in [-1, 1]; ``signal`` (C, H, W) (see
    :func:`trainer.config.signal_channels`); drag: ``drag_points`` (P, 4) ``[xs, ys, xt, yt]`` at the
    model resolution and ``drag_valid`` (P,); matching: ``match_idx_{h}x{w}`` (h*w,) int64 source
    token per target token, -1 where unsupervised (``stages.matching.correspondence_index``);
    ``key``, ``shard``.
    """
    from PIL import Image

    url = raw.get("__url__", "?")
    key = raw.get("__key__", "?")
    for want in spec.required():
        if _member(raw, want) is None:
            members = sorted(k for k in raw if not k.startswith("__"))
            raise DataError(
                f"shard {url}: sample {key} has no '{want.replace('.*', '.<jpg|png|webp>')}' "
                f"member, which task '{spec.task}' needs (read members: {members}). Build the "
                f"dataset with that signal enabled, or train another task."
            )
    H, W = spec.resolution
    current = "src"
    try:
        src = Image.open(io.BytesIO(raw[_member(raw, "src.*")])).convert("RGB")
        fit = _Fit(src.width, src.height, W, H)
        current = "tgt"
        tgt = Image.open(io.BytesIO(raw[_member(raw, "tgt.*")])).convert("RGB")
        out = {
            "src": _to_tensor(fit.image(src, Image.BICUBIC), True),
            "tgt": _to_tensor(fit.image(tgt, Image.BICUBIC), True),
            "key": key,
            "shard": url,
        }
        reader = SampleReader(raw, fit, spec, epoch, key)
        try:
            got = spec.signal().train.decode(reader)
        finally:
            current = reader.current
        for k, v in got.items():
            out[k] = torch.from_numpy(np.ascontiguousarray(v))
        if spec.match_grids:  # matching attention's supervision, from the signal that gives it
            try:
                got = match_signal().matches(reader, spec.match_grids)
            finally:
                current = reader.current
            for k, v in got.items():
                out[k] = torch.from_numpy(v)
    except DataError:
        raise
    except Exception as e:  # undecodable member
        raise DataError(f"shard {url}: sample {key}: cannot decode '{current}': {type(e).__name__}: {e}") from e
    return out


def collate(samples: list[dict]) -> dict:
    out = {}
    for k in samples[0]:
        vals = [s[k] for s in samples]
        out[k] = torch.stack(vals) if isinstance(vals[0], torch.Tensor) else vals
    return out


# --------------------------------------------------------------------------- the stream


class _Counter:
    def __init__(self):
        self.bad_samples = 0
        self.bad_shards = 0
        self.without_signal = 0  # written without this task's signal (dropped by the quality stage)


class PairStream(IterableDataset):
    """Decoded, batched samples of one process (see the module docstring).

    ``split``: ``train`` (keys not in the eval split), ``eval`` (only eval keys) or ``all``.
    ``infinite``: repeat epochs forever (training); otherwise one pass, in shard order when
    ``shuffle`` is off (evaluation). ``skip_batches``: batches this process already consumed
    (resume), distributed over the workers the way ``DataLoader`` interleaves them.
    """

    def __init__(
        self,
        urls: list[str],
        spec: SampleSpec,
        *,
        batch_size: int,
        split: str = "train",
        eval_permille: int = 0,
        eval_split_by: str = "key",
        seed: int = 0,
        shuffle: bool = True,
        shuffle_buffer: int = 256,
        shuffle_shards: bool = True,
        resampled: bool = False,
        on_error: str = "raise",
        infinite: bool = True,
        rank: int = 0,
        world_size: int = 1,
        skip_batches: int = 0,
        max_samples: Optional[int] = None,
        drop_last: bool = True,
        eval_keys: Optional[frozenset] = None,
    ):
        super().__init__()
        if not urls:
            raise DataError("no shards to read")
        if split not in ("train", "eval", "all"):
            raise ValueError(f"bad split {split!r}")
        self.urls, self.spec, self.batch_size = list(urls), spec, batch_size
        self.split, self.eval_permille, self.seed = split, eval_permille, seed
        self.eval_split_by = eval_split_by
        self.eval_keys = eval_keys  # the index's split (output.eval_frac), which wins over eval_permille
        self.shuffle, self.shuffle_buffer, self.shuffle_shards = shuffle, shuffle_buffer, shuffle_shards
        self.resampled, self.on_error, self.infinite = resampled, on_error, infinite
        self.rank, self.world_size, self.skip_batches = rank, world_size, skip_batches
        self.max_samples, self.drop_last = max_samples, drop_last
        self.counter = _Counter()

    # --- helpers
    def _handler(self, exn: Exception) -> bool:
        """webdataset exception handler for shard-level errors (open / tar structure)."""
        url = next((a for a in reversed(exn.args) if isinstance(a, str) and (a in self.urls)), None)
        where = url or " ".join(str(a) for a in exn.args[1:] if isinstance(a, str)) or "?"
        msg = f"corrupt or unreadable shard {where}: {type(exn).__name__}: {exn.args[0] if exn.args else exn}"
        if self.on_error == "skip":
            self.counter.bad_shards += 1
            log.warning(
                "skipping (data.on_error=skip): %s [%d shard(s), %d sample(s) skipped so far]",
                msg,
                self.counter.bad_shards,
                self.counter.bad_samples,
            )
            return True
        raise DataError(msg + "  (set data.on_error=skip to skip and count such shards)") from exn

    def _consumer(self) -> tuple[int, int, int, int]:
        wi = torch.utils.data.get_worker_info()
        wid, nw = (wi.id, wi.num_workers) if wi is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw, wid, nw

    def _raw_epoch(self, epoch: int, consumer: int, n_consumers: int) -> Iterator[dict]:
        import webdataset as wds
        from webdataset.tariterators import tarfile_samples

        if self.resampled:
            shards = wds.ResampledShards(self.urls, seed=self.seed, deterministic=True, worker_seed=lambda: consumer)
            shards.epoch = epoch - 1  # its __iter__ increments it
            source = iter(shards)
            sample_split = None
        else:
            order = list(self.urls)
            if self.shuffle and self.shuffle_shards:
                random.Random(_seed(self.seed, epoch, "shards")).shuffle(order)
            if len(order) >= n_consumers:
                mine, sample_split = order[consumer::n_consumers], None
            else:  # fewer shards than readers: everyone reads everything, keeps every n-th sample
                mine, sample_split = order, (consumer, n_consumers)
            source = ({"url": u} for u in mine)
        select = lambda name: self.spec.wanted_member(name.split("/")[-1])  # noqa: E731
        n = 0
        for s in tarfile_samples(source, handler=self._handler, select_files=select):
            key = s.get("__key__", "")
            if self.split != "all":
                if self.eval_keys is not None:
                    ev = key in self.eval_keys
                else:
                    ev = is_eval_key(key, self.eval_permille, self.eval_split_by) if self.eval_permille > 0 else False
                if ev != (self.split == "eval"):
                    continue
            if sample_split is not None:
                n += 1
                if (n - 1) % sample_split[1] != sample_split[0]:
                    continue
            yield s

    def _shuffled(self, it, rng: random.Random):
        if not self.shuffle or self.shuffle_buffer <= 1:
            yield from it
            return
        buf: list = []
        for s in it:
            if len(buf) < self.shuffle_buffer:
                buf.append(s)
                continue
            i = rng.randrange(len(buf))
            yield buf[i]
            buf[i] = s
        rng.shuffle(buf)
        yield from buf

    def _carrying(self, raws):
        """Only the samples that carry this task's signals (counted, logged once, not errors)."""
        for raw in raws:
            if self.spec.carries(raw):
                yield raw
                continue
            self.counter.without_signal += 1
            if self.counter.without_signal == 1:
                log.info(
                    "samples without the %s signal(s) are not used (the quality stage dropped them); first: %s",
                    "+".join(self.spec.signals_needed()),
                    raw.get("__key__", "?"),
                )

    def _samples(self) -> Iterator[tuple[int, dict]]:
        consumer, n_consumers, wid, nw = self._consumer()
        epochs = itertools.count() if self.infinite else range(1)
        for epoch in epochs:
            rng = random.Random(_seed(self.seed, epoch, consumer, "buffer"))
            got = 0
            for s in self._shuffled(self._carrying(self._raw_epoch(epoch, consumer, n_consumers)), rng):
                got += 1
                yield epoch, s
            if got == 0:
                what = {"train": "training", "eval": "eval-split", "all": ""}[self.split]
                raise DataError(
                    f"rank {self.rank} worker {wid}: no {what} samples in {len(self.urls)} shard(s) "
                    f"({self.urls[0]} ...); check data.train / data.eval_permille "
                    f"({self.eval_permille}/1000 of the keys are held out for eval)"
                )

    def __iter__(self):
        consumer, n_consumers, wid, nw = self._consumer()
        skip = 0
        if self.skip_batches > wid:
            skip = (self.skip_batches - wid + nw - 1) // nw * self.batch_size
        batch: list = []
        delivered = 0
        for epoch, raw in self._samples():
            if skip > 0:
                skip -= 1
                continue
            try:
                sample = decode_sample(raw, self.spec, epoch)
            except DataError as e:
                if self.on_error != "skip":
                    raise
                self.counter.bad_samples += 1
                log.warning(
                    "skipping (data.on_error=skip): %s [%d sample(s), %d shard(s) skipped so far]",
                    e,
                    self.counter.bad_samples,
                    self.counter.bad_shards,
                )
                continue
            batch.append(sample)
            delivered += 1
            if len(batch) == self.batch_size:
                yield self._finish(batch, wid)
                batch = []
            if self.max_samples is not None and delivered >= self.max_samples:
                break
        if batch and not (self.drop_last and self.infinite):
            yield self._finish(batch, wid)

    def _finish(self, batch: list, wid: int) -> dict:
        out = collate(batch)
        out["_skipped"] = torch.tensor([self.counter.bad_samples, self.counter.bad_shards])
        out["_worker"] = wid
        return out


def _worker_init(_):
    torch.set_num_threads(1)


def make_loader(
    stream: PairStream, num_workers: int, prefetch_factor: int = 2, pin_memory: bool = False, seed: int = 0
):
    kw = {}
    if num_workers > 0:
        kw = dict(prefetch_factor=prefetch_factor, persistent_workers=True, worker_init_fn=_worker_init)
    # a private generator: creating the iterator must not draw from the global torch RNG (exact resume)
    return DataLoader(
        stream,
        batch_size=None,
        num_workers=num_workers,
        pin_memory=pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **kw,
    )


def sample_spec(cfg, match_grids=(), train: bool = True) -> SampleSpec:
    d = cfg.data
    return SampleSpec(
        task=cfg.task,
        resolution=tuple(cfg.model.resolution),
        match_grids=list(match_grids),
        drag_min_points=d.drag_min_points,
        drag_max_points=d.drag_max_points,
        drag_sigma_px=d.drag_sigma_px,
        seed=cfg.seed,
        random_drag=train,
    )


def build_train_loader(
    cfg, spec: SampleSpec, rank: int = 0, world_size: int = 1, skip_batches: int = 0, pin_memory: bool = False
) -> DataLoader:
    d = cfg.data
    urls = expand_shards(cfg.train_shards, d.s3_command)
    # held-out keys are excluded from training whenever the split is used for evaluation: the index's
    # split column when the build marked one (output.eval_frac), else data.eval_permille
    eval_keys = index_eval_keys(urls) if cfg.eval_shards is None else None
    permille = d.eval_permille if cfg.eval_shards is None else 0
    if eval_keys is not None:
        log.info("train / eval split from the index's split column: %d eval samples held out", len(eval_keys))
    stream = PairStream(
        urls,
        spec,
        batch_size=d.batch_size,
        split="train" if (permille or eval_keys is not None) else "all",
        eval_permille=permille,
        eval_split_by=d.eval_split_by,
        seed=cfg.seed,
        shuffle=True,
        shuffle_buffer=d.shuffle_buffer,
        shuffle_shards=d.shuffle_shards,
        resampled=d.resampled,
        on_error=d.on_error,
        infinite=True,
        rank=rank,
        world_size=world_size,
        skip_batches=skip_batches,
        eval_keys=eval_keys,
    )
    return make_loader(stream, d.num_workers, d.prefetch_factor, pin_memory, seed=cfg.seed)


def eval_stream(cfg, spec: SampleSpec, batch_size: int, max_eval: Optional[int] = None) -> PairStream:
    """The held-out pairs, in shard order (deterministic): ``data.eval`` shards, else the eval split
    of ``data.train``; at most ``max_eval`` (default ``data.max_eval``)."""
    d = cfg.data
    eval_keys = None
    if cfg.eval_shards is not None:
        urls, split, permille = expand_shards(cfg.eval_shards, d.s3_command), "all", 0
    else:
        urls = expand_shards(cfg.train_shards, d.s3_command)
        eval_keys = index_eval_keys(urls)
        if d.eval_permille == 0 and eval_keys is None:
            raise DataError(
                "no eval split: the index has no split=eval samples (output.eval_frac), "
                "data.eval_permille is 0 and data.eval is not set"
            )
        split, permille = "eval", d.eval_permille
    return PairStream(
        urls,
        spec,
        batch_size=batch_size,
        split=split,
        eval_permille=permille,
        eval_split_by=d.eval_split_by,
        seed=cfg.seed,
        shuffle=False,
        on_error=d.on_error,
        infinite=False,
        max_samples=max_eval if max_eval is not None else d.max_eval,
        drop_last=False,
        eval_keys=eval_keys,
    )
