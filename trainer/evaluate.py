"""``vid2pair eval``: predictions on the held-out pairs and their scores against the targets.

* PSNR and SSIM (kornia, images in [0, 1], 11x11 Gaussian window) - always;
* LPIPS - only with the ``lpips`` package and its backbone weights already in torch's hub cache
  (nothing is downloaded); otherwise skipped with a logged message;
* CLIP-I (cosine similarity of CLIP image embeddings of prediction and target) - only with a local
  CLIP vision model (``eval.clip_weights``, or for ``framepainter`` the SVD directory's
  ``image_encoder``); otherwise skipped with a logged message.

Every score is given for the model and for baselines, on the full frame and on the changed region
(where the source and the target differ: the full frame is dominated by still background that any
copy gets right): ``source`` (no edit) and, for the coarse / collage tasks, ``signal`` (the
conditioning image itself, holes filled from the source). A prediction must beat them on the
changed region to have learned the edit. ``eval.json`` has ``scores`` (the means, by who and
metric), ``metrics`` (mean / std / n of every per-sample score) and the per-sample rows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from vid2pair.trainer.checkpoint import EMA, load_state, resolve_checkpoint
from vid2pair.trainer.config import ConfigError, TrainerConfig
from vid2pair.trainer.data import DataError, eval_stream, sample_spec
from vid2pair.trainer.models import build_model

log = logging.getLogger("vid2pair.trainer.eval")


def psnr_ssim(pred: torch.Tensor, tgt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM of images in [-1, 1]."""
    import kornia

    a = ((pred.float() + 1) / 2).clamp(0, 1)
    b = ((tgt.float() + 1) / 2).clamp(0, 1)
    psnr = torch.stack([kornia.metrics.psnr(a[i : i + 1], b[i : i + 1], 1.0) for i in range(len(a))])
    ssim = kornia.metrics.ssim(a, b, window_size=11).flatten(1).mean(1)
    return psnr, ssim


def changed_region(src: torch.Tensor, tgt: torch.Tensor, thresh: float = 15 / 255) -> torch.Tensor:
    """(B, 1, H, W) bool: where the source and the target differ (largest channel difference of the
    3x3-blurred images above 15 grey levels, like the pipeline's quality stage): where the edit happens.
    The full frame is dominated by still background that any copy gets right."""
    blur = lambda x: F.avg_pool2d((x.float() + 1) / 2, 3, stride=1, padding=1, count_include_pad=False)  # noqa: E731
    return (blur(src) - blur(tgt)).abs().amax(1, keepdim=True) > thresh


def masked_psnr_ssim(pred: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR / SSIM over ``mask`` (B, 1, H, W); NaN where the mask is empty."""
    import kornia

    a = ((pred.float() + 1) / 2).clamp(0, 1)
    b = ((tgt.float() + 1) / 2).clamp(0, 1)
    m = mask.float()
    n = m.flatten(1).sum(1)
    mse = (((a - b) ** 2).mean(1, keepdim=True) * m).flatten(1).sum(1) / n.clamp(min=1)
    psnr = torch.where(n > 0, 10 * torch.log10(1.0 / mse.clamp(min=1e-10)), torch.nan)
    smap = kornia.metrics.ssim(a, b, window_size=11).mean(1, keepdim=True)
    ssim = torch.where(n > 0, (smap * m).flatten(1).sum(1) / n.clamp(min=1), torch.nan)
    return psnr, ssim


def signal_baseline(task: str, batch: dict) -> Optional[torch.Tensor]:
    """The conditioning signal itself as an answer, where it is an image (the signal's
    :attr:`~vid2pair.core.stage.TrainInput.baseline`: the coarse edit or the collage with its holes
    filled from the source); None where it is not (sketch, drag)."""
    from vid2pair.trainer.config import task_input

    baseline = task_input(task).baseline
    return None if baseline is None else baseline(batch["signal"].float(), batch["src"])


def score_batch(task: str, batch: dict, pred: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample scores of the prediction and of the baselines: ``{who}_{metric}`` for who in
    model, source (no edit) and, for coarse / collage, signal; metric psnr, ssim (full frame) and
    psnr_changed, ssim_changed (the changed region); plus changed_frac."""
    tgt = batch["tgt"]
    mask = changed_region(batch["src"], tgt)
    out = {"changed_frac": mask.float().flatten(1).mean(1)}
    who = {"model": pred, "source": batch["src"]}
    sig = signal_baseline(task, batch)
    if sig is not None:
        who["signal"] = sig
    for name, img in who.items():
        out[f"{name}_psnr"], out[f"{name}_ssim"] = psnr_ssim(img, tgt)
        out[f"{name}_psnr_changed"], out[f"{name}_ssim_changed"] = masked_psnr_ssim(img, tgt, mask)
    return out


class LpipsMetric:
    """LPIPS if it can run without a download, else ``available`` is False and ``reason`` says why."""

    BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}

    def __init__(self, net: str, device):
        self.available, self.reason, self.model = False, "", None
        try:
            import lpips  # noqa: F401
        except ImportError:
            self.reason = "the `lpips` package is not installed (pip install lpips)"
            return
        ckpt = Path(torch.hub.get_dir()) / "checkpoints" / self.BACKBONE_FILES[net]
        if not ckpt.is_file():
            self.reason = f"torchvision {net} backbone weights are not in the local cache ({ckpt})"
            return
        import lpips

        self.model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
        self.available = True

    @torch.no_grad()
    def __call__(self, pred, tgt) -> torch.Tensor:
        return self.model(pred.float().clamp(-1, 1), tgt.float().clamp(-1, 1)).flatten()


class ClipMetric:
    """CLIP-I image-image similarity with a local transformers CLIP vision model."""

    def __init__(self, path: Optional[Path], device):
        self.available, self.reason, self.model = False, "", None
        if path is None:
            self.reason = (
                "no local CLIP weights (set eval.clip_weights to a transformers CLIP vision "
                "directory; framepainter uses the SVD image_encoder when present)"
            )
            return
        if not Path(path).exists():
            self.reason = f"CLIP weights not found at {path}"
            return
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(str(path)).to(device).eval()
        self.size = self.model.config.image_size
        self.available = True

    @torch.no_grad()
    def embed(self, x):
        from vid2pair.trainer.models.framepainter import CLIP_MEAN, CLIP_STD

        x = ((x.float() + 1) / 2).clamp(0, 1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", antialias=True, align_corners=False)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        dt = next(self.model.parameters()).dtype
        return F.normalize(self.model(pixel_values=((x - mean) / std).to(dt)).image_embeds.float(), dim=-1)

    def __call__(self, pred, tgt) -> torch.Tensor:
        return (self.embed(pred) * self.embed(tgt)).sum(-1)


def _default_clip_path(cfg: TrainerConfig) -> Optional[Path]:
    if cfg.eval.clip_weights:
        return Path(cfg.eval.clip_weights).expanduser()
    fp = cfg.model.framepainter
    if cfg.model.name == "framepainter" and fp.init == "pretrained":
        try:
            from vid2pair.pipeline.models import resolve_weights

            return resolve_weights(fp.base_model, fp.weights) / "image_encoder"
        except (FileNotFoundError, KeyError):
            return None
    return None


def _stats(xs: list[float]) -> dict:
    n = len(xs)
    if n == 0:
        return {"mean": None, "std": None, "n": 0}
    m = sum(xs) / n
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / max(1, n - 1))
    return {"mean": round(m, 5), "std": round(sd, 5), "n": n}


def evaluate(
    cfg: TrainerConfig,
    checkpoint,
    output: Optional[str] = None,
    max_eval: Optional[int] = None,
    use_ema: Optional[bool] = None,
    steps: Optional[int] = None,
    device: Optional[str] = None,
) -> dict:
    """Score a checkpoint on the eval split; writes ``eval.json`` and image grids to ``output``
    (default: ``<checkpoint dir>/eval``) and returns the report."""
    from vid2pair.trainer.distributed import pick_device
    from vid2pair.trainer.train import autocast_dtype, image_grid, to_device

    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    dev = pick_device(device or cfg.train.device, 0)
    ck_path = resolve_checkpoint(checkpoint)
    state = load_state(ck_path)
    if state.get("model_name") not in (None, cfg.model.name) or state.get("task") not in (None, cfg.task):
        raise ConfigError(
            f"--checkpoint: {ck_path} was trained as model {state.get('model_name')!r} / "
            f"task {state.get('task')!r}, "
            f"the config says {cfg.model.name!r} / {cfg.task!r}"
        )
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, dev)
    model.load_checkpoint_state_dict(state["model"])
    model.to(dev).eval()
    use_ema = cfg.eval.use_ema if use_ema is None else use_ema
    ema_ctx = contextlib.nullcontext()
    used_ema = False
    if use_ema and state.get("ema"):
        named = model.trainable_named_parameters()
        ema = EMA(named, state["ema"]["decay"])
        ema.load_state_dict(state["ema"])
        ema.to(dev)
        ema_ctx = ema.swapped([p for _, p in named])
        used_ema = True
    out_dir = Path(output) if output else ck_path.parent / "eval"
    out_dir.mkdir(parents=True, exist_ok=True)

    metrics = list(cfg.eval.metrics)
    extra: dict = {}
    skipped: dict = {}
    if "lpips" in metrics:
        m = LpipsMetric(cfg.eval.lpips_net, dev)
        if m.available:
            extra["lpips"] = m
        else:
            skipped["lpips"] = m.reason
    if "clip" in metrics:
        m = ClipMetric(_default_clip_path(cfg), dev)
        if m.available:
            extra["clip_i"] = m
        else:
            skipped["clip"] = m.reason
    for k, why in skipped.items():
        log.info("eval: %s skipped: %s", k, why)

    amp_dtype = autocast_dtype(cfg.train.precision, dev)
    amp = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
    stream = eval_stream(
        cfg,
        sample_spec(cfg, (), train=False),
        batch_size=cfg.eval.batch_size,
        max_eval=max_eval if max_eval is not None else cfg.data.max_eval,
    )
    scores: dict[str, list[float]] = {}
    per_sample = []
    saved = 0
    gen = torch.Generator(device=dev)
    t0 = time.perf_counter()
    with ema_ctx:
        for bi, batch in enumerate(stream):
            b = to_device(batch, dev)
            gen.manual_seed(cfg.seed + bi)
            with amp:
                pred = model.predict(b, steps=steps or cfg.eval.sample_steps, generator=gen).float()
            vals = score_batch(cfg.task, b, pred)
            for k, m in extra.items():
                vals[f"model_{k}"] = m(pred, b["tgt"])
            for k, v in vals.items():
                scores.setdefault(k, []).extend(float(x) for x in v.cpu() if math.isfinite(float(x)))
            for i, key in enumerate(batch["key"]):
                per_sample.append(
                    {"key": key, "shard": batch["shard"][i], **{k: round(float(v[i]), 5) for k, v in vals.items()}}
                )
            if saved < cfg.eval.save_images:
                from torchvision.utils import save_image

                save_image(image_grid(cfg.task, b, pred), out_dir / f"batch-{bi:04d}.png")
                saved += len(batch["key"])
    if not per_sample:
        raise DataError("the eval split is empty (data.eval / data.eval_permille)")
    metrics = {k: _stats(v) for k, v in scores.items()}
    table = {
        who: {m: metrics.get(f"{who}_{m}", {}).get("mean") for m in ("psnr", "ssim", "psnr_changed", "ssim_changed")}
        for who in ("model", "source", "signal")
        if f"{who}_psnr" in metrics
    }
    report = {
        "checkpoint": str(ck_path),
        "step": int(state.get("step", -1)),
        "model": cfg.model.name,
        "task": cfg.task,
        "ema": used_ema,
        "n": len(per_sample),
        "resolution": list(cfg.model.resolution),
        "sample_steps": steps or cfg.eval.sample_steps,
        "seconds": round(time.perf_counter() - t0, 2),
        "changed_frac": metrics["changed_frac"]["mean"],
        "scores": table,
        "metrics": metrics,
        "skipped": skipped,
    }
    (out_dir / "eval.json").write_text(json.dumps({**report, "samples": per_sample}, indent=2))

    def fmt(who):
        r = table.get(who)
        if not r:
            return ""
        pc, sc = r["psnr_changed"] or float("nan"), r["ssim_changed"] or float("nan")
        return f"{who} {r['psnr']:.2f} dB / {r['ssim']:.3f} full, {pc:.2f} dB / {sc:.3f} changed"

    log.info(
        "eval %s: %d pairs (changed region %.1f %% of the frame): %s%s -> %s",
        ck_path.parent.name,
        report["n"],
        100 * (report["changed_frac"] or 0),
        "; ".join(x for x in map(fmt, table) if x),
        "".join(f", {k} {metrics['model_' + k]['mean']:.4f}" for k in extra if "model_" + k in metrics),
        out_dir,
    )
    return report
