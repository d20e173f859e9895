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
    """(B, C, H, W) conditioning -> (B, 3, H, W) in [0, 1] for display."""
    src01 = (src.float() + 1) / 2
    s = signal.float()
    if task == "sketch":
        return s.expand(-1, 3, -1, -1).clamp(0, 1)
    if task in ("coarse", "collage"):
        rgb, m = (s[:, :3] + 1) / 2, s[:, 3:4]
        hole = torch.tensor([1.0, 0.0, 1.0], device=s.device).view(1, 3, 1, 1)
        return (rgb * (1 - m) + hole * m).clamp(0, 1)
    return (0.35 * src01 + s[:, :3]).clamp(0, 1)  # drag: handles red, targets green, paths blue


def image_grid(task: str, batch: dict, pred: torch.Tensor) -> torch.Tensor:
    """Rows of ``src | signal | prediction | target``, (3, H', W') in [0, 1]."""
    from torchvision.utils import make_grid

    cols = [(batch["src"].float() + 1) / 2, signal_to_rgb(task, batch["signal"], batch["src"]),
            (pred.float() + 1) / 2, (batch["tgt"].float() + 1) / 2]
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
    tr = cfg.train
    device = info.device
    if tr.num_threads:
        torch.set_num_threads(tr.num_threads)
    if tr.deterministic:
        torch.use_deterministic_algorithms(True)
    amp_dtype = autocast_dtype(tr.precision, device)
    accum = resolve_grad_accum(cfg, info.world_size)
    out = cfg.output_dir
    ckpt_root = out / "checkpoints"

    last = latest_checkpoint(ckpt_root)
    if last is not None and not resume:
        raise FileExistsError(f"{out} already holds checkpoints (newest {last.name}): pass --resume to continue, "
                              f"or choose another train.output_dir")
    if info.is_main:
        out.mkdir(parents=True, exist_ok=True)
        import yaml

        (out / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    barrier(info)

    seed_all(cfg.seed)  # identical model init on every rank
    model = build_model(cfg, device).to(device)
    named = model.trainable_named_parameters()
    params = [p for _, p in named]
    n_train = sum(p.numel() for p in params)
    n_total = sum(p.numel() for p in model.parameters())
    o = cfg.optim
    opt_kw = {"fused": True} if device.type == "cuda" else {}
    optimizer = torch.optim.AdamW(params, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay, eps=o.eps,
                                  **opt_kw)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    ema = EMA(named, tr.ema_decay) if tr.ema_decay else None

    step = 0
    if resume and last is not None:
        state = torch.load(last / "state.pt", map_location="cpu", weights_only=True)
        model.load_checkpoint_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        step = int(state["step"])
        if state.get("world_size") != info.world_size or state.get("grad_accum") != accum:
            log.warning("resuming %s saved with world_size %s / grad_accum %s on world_size %d / grad_accum %d: "
                        "the data order and RNG streams differ from an uninterrupted run",
                        last.name, state.get("world_size"), state.get("grad_accum"), info.world_size, accum)
        rngs = state.get("rng") or []
        if info.rank < len(rngs):
            set_rng_state(rngs[info.rank])
        else:
            seed_all(cfg.seed + 1000 * info.rank + step)
        log.info("resumed from %s (step %d)", last, step)
        del state
    else:
        if resume:
            log.info("--resume: no checkpoint in %s, starting from step 0", ckpt_root)
        seed_all(cfg.seed + 1000 * info.rank)  # different noise draws per rank
    if ema is not None:
        ema.to(device)

    spec = sample_spec(cfg, model.match_grids, train=True)
    # batches already consumed on this rank: the loader skips them so a resume sees the same data
    loader = build_train_loader(cfg, spec, info.rank, info.world_size, skip_batches=step * accum,
                                pin_memory=device.type == "cuda")
    module = model
    if info.enabled:
        from torch.nn.parallel import DistributedDataParallel as DDP

        model = DDP(module, device_ids=[device.index] if device.type == "cuda" else None,
                    find_unused_parameters=False)
    fwd = torch.compile(model) if tr.compile else model

    writer = None
    metrics_f = None
    eval_batch = None
    if info.is_main:
        try:
            from torch.utils.tensorboard import SummaryWriter

            # on resume, drop events logged after the checkpoint by the interrupted run
            writer = SummaryWriter(str(out / "tb"), purge_step=step if step else None)
        except ImportError:
            log.warning("tensorboard is not installed: no TensorBoard logs (metrics.jsonl is still written)")
        _truncate_metrics(out / "metrics.jsonl", step)
        metrics_f = open(out / "metrics.jsonl", "a")
        if tr.eval_every:
            eval_batch = _fixed_eval_batch(cfg, module, tr.eval_images)
    log.info("model %s: %.2fM parameters, %.2fM trained; world_size %d, batch %d x accum %d x %d = %d per step; "
             "precision %s; device %s", cfg.model.name, n_total / 1e6, n_train / 1e6, info.world_size,
             cfg.data.batch_size, accum, info.world_size, cfg.data.batch_size * accum * info.world_size,
             amp_dtype or "fp32", device)

    tracker = _Tracker()
    samples_per_step = cfg.data.batch_size * accum * info.world_size
    it = iter(loader)
    window_t0 = time.perf_counter()
    window_steps = 0
    data_wait = 0.0
    acc_logs: dict = {}
    acc_n = 0
    last_logged: dict = {}
    reported_skips = (0, 0)
    model.train()
    while step < tr.max_steps:
        for micro in range(accum):
            tw = time.perf_counter()
            batch = next(it)
            data_wait += time.perf_counter() - tw
            tracker.update(batch)
            batch = to_device(batch, device)
            sync = contextlib.nullcontext()
            if info.enabled and micro < accum - 1:
                sync = model.no_sync()
            amp = torch.autocast(device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            with sync, amp:
                loss, logs = fwd(batch)
            scaler.scale(loss / accum).backward()
            logs = dict(logs, loss=loss.detach())
            for k, v in logs.items():
                acc_logs[k] = acc_logs.get(k, 0.0) + v.detach().float()
            acc_n += 1
        scaler.unscale_(optimizer)
        if tr.grad_clip:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, tr.grad_clip)
        else:
            grad_norm = torch.nn.utils.clip_grad_norm_(params, float("inf"))
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        step += 1
        window_steps += 1
        if ema is not None:
            ema.update(params)

        if step % tr.log_every == 0 or step == tr.max_steps:
            keys = sorted(acc_logs)
            vec = torch.stack([acc_logs[k] / acc_n for k in keys] + [grad_norm.detach().float().to(device)])
            vec = all_reduce_mean(vec.to(device), info).cpu().tolist()
            elapsed = time.perf_counter() - window_t0
            rec = {"step": step, **{k: round(v, 6) for k, v in zip(keys, vec[:-1])},
                   "grad_norm": round(vec[-1], 6), "lr": scheduler.get_last_lr()[0],
                   "samples_per_s": round(window_steps * samples_per_step / max(elapsed, 1e-9), 3),
                   "data_wait_frac": round(data_wait / max(elapsed, 1e-9), 4),
                   "samples_seen": step * samples_per_step}
            skips = tracker.totals()
            if skips != (0, 0):
                rec["skipped_samples"], rec["skipped_shards"] = skips
                if skips != reported_skips:
                    log.warning("data: %d sample(s) and %d shard(s) skipped so far on rank %d (data.on_error=skip)",
                                skips[0], skips[1], info.rank)
                    reported_skips = skips
            if info.is_main:
                metrics_f.write(json.dumps(rec) + "\n")
                metrics_f.flush()
                if writer is not None:
                    for k, v in rec.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                log.info("step %d/%d loss %.4f lr %.2e %.1f samples/s (data wait %.0f%%)", step, tr.max_steps,
                         rec["loss"], rec["lr"], rec["samples_per_s"], 100 * rec["data_wait_frac"])
            last_logged = rec
            acc_logs, acc_n = {}, 0
            window_t0, window_steps, data_wait = time.perf_counter(), 0, 0.0

        if tr.eval_every and step % tr.eval_every == 0:
            if info.is_main and eval_batch is not None:
                _eval_images(cfg, module, ema, params, eval_batch, step, writer, out, device, amp_dtype)
            barrier(info)
            window_t0 = time.perf_counter()  # eval time is not training throughput

        if step % tr.ckpt_every == 0 or step == tr.max_steps:
            _checkpoint(cfg, info, module, optimizer, scheduler, scaler, ema, step, accum, ckpt_root)
            window_t0 = time.perf_counter()

    sync_ok = _check_param_sync(module, info)
    summary = {"steps": step, "world_size": info.world_size, "grad_accum": accum,
               "samples_per_step": samples_per_step, "last": last_logged, "params_total": n_total,
               "params_trained": n_train, "ddp_param_sync": sync_ok, "output_dir": str(out)}
    if info.is_main:
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        if writer is not None:
            writer.close()
        metrics_f.close()
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
        state = {"step": step, "model": module.checkpoint_state_dict(), "optimizer": optimizer.state_dict(),
                 "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                 "ema": ema.state_dict() if ema is not None else None, "rng": gathered,
                 "world_size": info.world_size, "grad_accum": accum,
                 "data": {"batches_per_rank": step * accum, "batch_size": cfg.data.batch_size},
                 "config": cfg.to_dict(), "model_name": cfg.model.name, "task": cfg.task}
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
    log.info("eval images at step %d: PSNR %.2f dB, SSIM %.3f on %d held-out pairs", step, p.mean().item(),
             s.mean().item(), len(p))
