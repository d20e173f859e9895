"""The training loop: ``vid2pair train`` (single process, or one process per GPU under torchrun).

DDP (NCCL on GPU, gloo on CPU), bf16 autocast on GPU, gradient accumulation and clipping, EMA,
atomic checkpoints with everything needed for an exact resume (model, EMA, optimizer, scheduler,
step, data position and the RNG states of every rank), TensorBoard (loss, samples/s, eval images)
and ``metrics.jsonl`` (one JSON line per logged step, rank 0).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Optional

import torch
import torch.distributed as dist

from vid2pair.trainer.checkpoint import EMA, latest_checkpoint, rng_state, save_checkpoint, seed_all, set_rng_state
from vid2pair.trainer.config import ConfigError, TrainerConfig, resolve_grad_accum
from vid2pair.trainer.data import DataError, build_train_loader, eval_stream, sample_spec
from vid2pair.trainer.distributed import DistInfo, all_reduce_mean, barrier, cleanup, init_distributed
from vid2pair.trainer.models import build_model

log = logging.getLogger("vid2pair.trainer")


def _setup_logging(rank: int) -> None:
    if logging.getLogger().handlers:
        return
    fmt = f"%(asctime)s [rank {rank}] %(levelname)s %(message)s"
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING, format=fmt, stream=sys.stderr)


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None: no autocast (fp32)."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    if precision == "fp32":
        return None
    if device.type != "cuda":
        raise ConfigError(f"train.precision: {precision} needs a GPU (use fp32 or auto on CPU)")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def lr_lambda(cfg: TrainerConfig):
    o, total = cfg.optim, cfg.train.max_steps

    def f(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        frac = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        if o.schedule == "linear":
            return 1.0 - (1.0 - o.min_lr_ratio) * frac
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * frac))

    return f


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def signal_to_rgb(task: str, signal: torch.Tensor, src: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) conditioning -> (B, 3, H, W) in [0, 1] for display (the signal's
    :attr:`~vid2pair.core.stage.TrainInput.display`)."""
    from vid2pair.trainer.config import task_input

    return task_input(task).display(signal.float(), src)


def image_grid(task: str, batch: dict, pred: torch.Tensor) -> torch.Tensor:
    """Rows of ``src | signal | prediction | target``, (3, H', W') in [0, 1]."""
    from torchvision.utils import make_grid

    cols = [
        (batch["src"].float() + 1) / 2,
        signal_to_rgb(task, batch["signal"], batch["src"]),
        (pred.float() + 1) / 2,
        (batch["tgt"].float() + 1) / 2,
    ]
    tiles = torch.stack(cols, 1).flatten(0, 1).clamp(0, 1).cpu()
    return make_grid(tiles, nrow=4, padding=2, pad_value=1.0)


class _Tracker:
    """Skip counters reported by the data workers (cumulative per worker)."""

    def __init__(self):
        self.per_worker: dict = {}

    def update(self, batch: dict) -> None:
        if "_skipped" in batch:
            self.per_worker[batch["_worker"]] = [int(x) for x in batch["_skipped"]]

    def totals(self) -> tuple[int, int]:
        s = [0, 0]
        for v in self.per_worker.values():
            s[0] += v[0]
            s[1] += v[1]
        return s[0], s[1]


def train(cfg: TrainerConfig, resume: bool = False) -> dict:
    """Run (or resume) training; returns a summary dict (rank 0 also writes it to summary.json)."""
    info = init_distributed(cfg.train.device)
    _setup_logging(info.rank)
    try:
        return _train(cfg, resume, info)
    finally:
        cleanup(info)


def _train(cfg: TrainerConfig, resume: bool, info: DistInfo) -> dict:
    """The named steps of a run: the output, the model and its optimizer, the resume, the data, the
    logs, then the loop of optimizer steps (each logged, evaluated and checkpointed on its schedule)."""
    tr = cfg.train
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True)
    run = _Run(cfg, info)
    last = _prepare_output(cfg, info, resume)
    seed_all(cfg.seed)  # identical model init on every rank
    run.build_model()
    step = _restore(run, last) if resume and last is not None else _fresh_start(run, resume)
    run.start_data(step)
    run.open_logs(step)
    run.model.train()
    while step < tr.max_steps:
        grad_norm = run.optimizer_step()
        step += 1
        run.window.steps += 1
        if step % tr.log_every == 0 or step == tr.max_steps:
            run.log_step(step, grad_norm)
        if tr.eval_every and step % tr.eval_every == 0:
            if info.is_main and run.eval_batch is not None:
                _eval_images(
                    cfg,
                    run.module,
                    run.ema,
                    run.params,
                    run.eval_batch,
                    step,
                    run.writer,
                    cfg.output_dir,
                    info.device,
                    run.amp_dtype,
                )
            barrier(info)
            run.window.t0 = time.perf_counter()  # eval time is not training throughput
        if step % tr.ckpt_every == 0 or step == tr.max_steps:
            _checkpoint(
                cfg, info, run.module, run.optimizer, run.scheduler, run.scaler, run.ema, step, run.accum, run.ckpt_root
            )
            run.window.t0 = time.perf_counter()
    return run.finish(step)


def _prepare_output(cfg: TrainerConfig, info: DistInfo, resume: bool) -> Optional[Path]:
    """The newest checkpoint of the output (refused without ``resume``); rank 0 writes config.yaml."""
    out = cfg.output_dir
    last = latest_checkpoint(out / "checkpoints")
    if last is not None and not resume:
        raise FileExistsError(
            f"{out} already holds checkpoints (newest {last.name}): pass --resume to continue, "
            f"or choose another train.output_dir"
        )
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    barrier(info)
    return last


def _restore(run: "_Run", last: Path) -> int:
    """Model, optimizer, scheduler, scaler, EMA and this rank's RNG state from checkpoint ``last``;
    returns its step."""
    cfg, info = run.cfg, run.info
    state = torch.load(last / "state.pt", map_location="cpu", weights_only=True)
    run.model.load_checkpoint_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    run.scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        run.scaler.load_state_dict(state["scaler"])
    if run.ema is not None and state.get("ema"):
        run.ema.load_state_dict(state["ema"])
    step = int(state["step"])
    if state.get("world_size") != info.world_size or state.get("grad_accum") != run.accum:
        log.warning(
            "resuming %s saved with world_size %s / grad_accum %s on world_size %d / grad_accum %d: "
            "the data order and RNG streams differ from an uninterrupted run",
            last.name,
            state.get("world_size"),
            state.get("grad_accum"),
            info.world_size,
            run.accum,
        )
    rngs = state.get("rng") or []
    if info.rank < len(rngs):
        set_rng_state(rngs[info.rank])
    else:
        seed_all(cfg.seed + 1000 * info.rank + step)
    log.info("resumed from %s (step %d)", last, step)
    del state
    if run.ema is not None:
        run.ema.to(info.device)
    return step


def _fresh_start(run: "_Run", resume: bool) -> int:
    if resume:
        log.info("--resume: no checkpoint in %s, starting from step 0", run.ckpt_root)
    seed_all(run.cfg.seed + 1000 * run.info.rank)  # different noise draws per rank
    if run.ema is not None:
        run.ema.to(run.info.device)
    return 0


class _Window:
    """What the log lines average over: the losses of the micro-batches since the last log line, the
    optimizer steps, the time and the time spent waiting for data."""

    def __init__(self):
        self.t0 = time.perf_counter()
        self.steps = 0
        self.data_wait = 0.0
        self.logs: dict = {}
        self.n = 0

    def add(self, logs: dict) -> None:
        for k, v in logs.items():
            self.logs[k] = self.logs.get(k, 0.0) + v.detach().float()
        self.n += 1


class _Run:
    """One training run's state, built step by step by :func:`_train`."""

    def __init__(self, cfg: TrainerConfig, info: DistInfo):
        self.cfg, self.info = cfg, info
        self.amp_dtype = autocast_dtype(cfg.train.precision, info.device)
        self.accum = resolve_grad_accum(cfg, info.world_size)
        self.ckpt_root = cfg.output_dir / "checkpoints"
        self.samples_per_step = cfg.data.batch_size * self.accum * info.world_size
        self.writer = self.metrics_f = self.eval_batch = None
        self.tracker = _Tracker()
        self.last_logged: dict = {}
        self.reported_skips = (0, 0)

    def build_model(self) -> None:
        """The model, its trained parameters, AdamW, the LR schedule, the grad scaler and the EMA."""
        cfg, device = self.cfg, self.info.device
        self.model = self.module = build_model(cfg, device).to(device)
        named = self.model.trainable_named_parameters()
        self.params = [p for _, p in named]
        self.n_train = sum(p.numel() for p in self.params)
        self.n_total = sum(p.numel() for p in self.model.parameters())
        o = cfg.optim
        opt_kw = {"fused": True} if device.type == "cuda" else {}
        self.optimizer = torch.optim.AdamW(
            self.params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps, **opt_kw
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(cfg))
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        self.ema = EMA(named, cfg.train.ema_decay) if cfg.train.ema_decay else None

    def start_data(self, step: int) -> None:
        """The training loader (past the batches already consumed on this rank, so that a resume sees
        the same data), and the model wrapped for DDP / compiled."""
        cfg, info, device = self.cfg, self.info, self.info.device
        spec = sample_spec(cfg, self.module.match_grids, train=True)
        loader = build_train_loader(
            cfg, spec, info.rank, info.world_size, skip_batches=step * self.accum, pin_memory=device.type == "cuda"
        )
        if info.enabled:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.model = DDP(
                self.module, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=False
            )
        self.fwd = torch.compile(self.model) if cfg.train.compile else self.model
        self.batches = iter(loader)

    def open_logs(self, step: int) -> None:
        """Rank 0: TensorBoard, metrics.jsonl (cut back to ``step`` on a resume) and the eval batch."""
        cfg, info, out = self.cfg, self.info, self.cfg.output_dir
        if info.is_main:
            try:
                from torch.utils.tensorboard import SummaryWriter

                # on resume, drop events logged after the checkpoint by the interrupted run
                self.writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs (metrics.jsonl is still written)")
            _truncate_metrics(out / "metrics.jsonl", step)
            self.metrics_f = open(out / "metrics.jsonl", "a")
            if cfg.train.eval_every:
                self.eval_batch = _fixed_eval_batch(cfg, self.module, cfg.train.eval_images)
        log.info(
            "model %s: %.2fM parameters, %.2fM trained; world_size %d, batch %d x accum %d x %d = %d per step; "
            "precision %s; device %s",
            cfg.model.name,
            self.n_total / 1e6,
            self.n_train / 1e6,
            info.world_size,
            cfg.data.batch_size,
            self.accum,
            info.world_size,
            self.samples_per_step,
            self.amp_dtype or "fp32",
            info.device,
        )
        self.window = _Window()

    def optimizer_step(self) -> torch.Tensor:
        """``accum`` micro-batches forward and backward, then one clipped optimizer step; returns the
        gradient norm."""
        info, device, accum, amp_dtype = self.info, self.info.device, self.accum, self.amp_dtype
        for micro in range(accum):
            tw = time.perf_counter()
            batch = next(self.batches)
            self.window.data_wait += time.perf_counter() - tw
            self.tracker.update(batch)
            batch = to_device(batch, device)
            sync = self.model.no_sync() if info.enabled and micro < accum - 1 else contextlib.nullcontext()
            amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with sync, amp:
                loss, logs = self.fwd(batch)
            self.scaler.scale(loss / accum).backward()
            self.window.add(dict(logs, loss=loss.detach()))
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.train.grad_clip or float("inf"))
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.params)
        return grad_norm

    def log_step(self, step: int, grad_norm: torch.Tensor) -> None:
        """The window's means over every rank: a metrics.jsonl line, TensorBoard scalars, a log line."""
        info, w, device = self.info, self.window, self.info.device
        keys = sorted(w.logs)
        vec = torch.stack([w.logs[k] / w.n for k in keys] + [grad_norm.detach().float().to(device)])
        vec = all_reduce_mean(vec.to(device), info).cpu().tolist()
        elapsed = time.perf_counter() - w.t0
        rec = {
            "step": step,
            **{k: round(v, 6) for k, v in zip(keys, vec[:-1])},
            "grad_norm": round(vec[-1], 6),
            "lr": self.scheduler.get_last_lr()[0],
            "samples_per_s": round(w.steps * self.samples_per_step / max(elapsed, 1e-9), 3),
            "data_wait_frac": round(w.data_wait / max(elapsed, 1e-9), 4),
            "samples_seen": step * self.samples_per_step,
        }
        skips = self.tracker.totals()
        if skips != (0, 0):
            rec["skipped_samples"], rec["skipped_shards"] = skips
            if skips != self.reported_skips:
                log.warning(
                    "data: %d sample(s) and %d shard(s) skipped so far on rank %d (data.on_error=skip)",
                    skips[0],
                    skips[1],
                    info.rank,
                )
                self.reported_skips = skips
        if info.is_main:
            self._write_metrics(rec, step)
        self.last_logged = rec
        self.window = _Window()

    def _write_metrics(self, rec: dict, step: int) -> None:
        self.metrics_f.write(json.dumps(rec) + "\n")
        self.metrics_f.flush()
        if self.writer is not None:
            for k, v in rec.items():
                if k != "step":
                    self.writer.add_scalar(f"train/{k}", v, step)
        log.info(
            "step %d/%d loss %.4f lr %.2e %.1f samples/s (data wait %.0f%%)",
            step,
            self.cfg.train.max_steps,
            rec["loss"],
            rec["lr"],
            rec["samples_per_s"],
            100 * rec["data_wait_frac"],
        )

    def finish(self, step: int) -> dict:
        """The DDP sync check and the run's summary (rank 0 writes summary.json and closes the logs)."""
        info, out = self.info, self.cfg.output_dir
        sync_ok = _check_param_sync(self.module, info)
        summary = {
            "steps": step,
            "world_size": info.world_size,
            "grad_accum": self.accum,
            "samples_per_step": self.samples_per_step,
            "last": self.last_logged,
            "params_total": self.n_total,
            "params_trained": self.n_train,
            "ddp_param_sync": sync_ok,
            "output_dir": str(out),
        }
        if info.is_main:
            (out / "summary.json").write_text(json.dumps(summary, indent=2))
            if self.writer is not None:
                self.writer.close()
            self.metrics_f.close()
        return summary


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep the lines of ``metrics.jsonl`` up to ``step`` (a resumed run rewrites what follows)."""
    if not path.is_file():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:
            continue
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(x + "\n" for x in keep))
    tmp.replace(path)


def _check_param_sync(module, info: DistInfo) -> Optional[bool]:
    """DDP sanity check: every rank holds the same trained parameters."""
    if not info.enabled:
        return None
    with torch.no_grad():
        s = torch.stack([p.detach().double().sum() for _, p in module.trainable_named_parameters()]).sum()
        s = s.to(info.device)
        lo, hi = s.clone(), s.clone()
        dist.all_reduce(lo, op=dist.ReduceOp.MIN)
        dist.all_reduce(hi, op=dist.ReduceOp.MAX)
    return bool((hi - lo).abs().item() <= 1e-9 * max(1.0, abs(s.item())))


def _checkpoint(cfg, info, module, optimizer, scheduler, scaler, ema, step, accum, ckpt_root) -> None:
    rng = rng_state()
    if info.enabled:
        gathered = [None] * info.world_size
        dist.all_gather_object(gathered, rng)
    else:
        gathered = [rng]
    if info.is_main:
        state = {
            "step": step,
            "model": module.checkpoint_state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler.is_enabled() else None,
            "ema": ema.state_dict() if ema is not None else None,
            "rng": gathered,
            "world_size": info.world_size,
            "grad_accum": accum,
            "data": {"batches_per_rank": step * accum, "batch_size": cfg.data.batch_size},
            "config": cfg.to_dict(),
            "model_name": cfg.model.name,
            "task": cfg.task,
        }
        path = save_checkpoint(ckpt_root, step, state, cfg.train.keep_checkpoints)
        log.info("checkpoint %s", path)
    barrier(info)


def _fixed_eval_batch(cfg, module, n: int) -> Optional[dict]:
    """The first ``n`` held-out pairs (the same every run), or None when there is no eval split."""
    try:
        stream = eval_stream(cfg, sample_spec(cfg, (), train=False), batch_size=n, max_eval=n)
        return next(iter(stream), None)
    except DataError as e:
        log.warning("no eval images during training: %s", e)
        return None


def _eval_images(cfg, module, ema, params, batch, step, writer, out: Path, device, amp_dtype) -> None:
    from vid2pair.trainer.evaluate import psnr_ssim

    b = to_device(batch, device)
    module.eval()
    ctx = ema.swapped(params) if (ema is not None and cfg.eval.use_ema) else contextlib.nullcontext()
    amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    with ctx, amp:
        pred = module.predict(b, generator=gen).float()
    module.train()
    p, s = psnr_ssim(pred, b["tgt"].float())
    grid = image_grid(cfg.task, b, pred)
    (out / "samples").mkdir(exist_ok=True)
    from torchvision.utils import save_image

    save_image(grid, out / "samples" / f"step-{step:08d}.png")
    if writer is not None:
        writer.add_image("eval/src|signal|pred|tgt", grid, step)
        writer.add_scalar("eval/psnr", p.mean().item(), step)
        writer.add_scalar("eval/ssim", s.mean().item(), step)
    log.info(
        "eval images at step %d: PSNR %.2f dB, SSIM %.3f on %d held-out pairs",
        step,
        p.mean().item(),
        s.mean().item(),
        len(p),
    )
