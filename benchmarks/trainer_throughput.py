"""Trainer throughput (tiny model, CPU) and a GPU memory estimate for the FramePainter presets.

    python benchmarks/trainer_throughput.py                  # both parts (builds the demo shards if needed)
    python benchmarks/trainer_throughput.py --shards DIR     # your shards
    python benchmarks/trainer_throughput.py --memory-only [--preset configs/train_framepainter_drag.yaml]

Throughput: the data loader alone (samples/s, per worker count), one training step alone on a fixed
in-memory batch (samples/s), and the real loop (``trainer.train``: samples/s and the fraction of
time spent waiting for data). The loader must be several times faster than the step.

Memory (method in docs/trainer.md): parameter counts of the SVD U-Net (+ matching projections),
control encoder, VAE and CLIP from their published configs, built on the ``meta`` device (no
weights, no memory); bytes = trained fp32 weights + grads + AdamW moments (16 B/param) [+ fp32 EMA],
frozen VAE / CLIP in bf16; activations = the tensors autograd saves for backward during one real
forward of the model at the preset's resolution and batch, run on ``meta`` tensors (bf16) and
counted through ``torch.autograd.graph.saved_tensors_hooks`` (de-duplicated by storage).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

GiB = 2**30


# --------------------------------------------------------------------------- throughput


def tiny_cfg(shards: Path, out: Path, *extra):
    from vid2pair.trainer.config import load_train_config

    return load_train_config(
        ROOT / "configs" / "train_tiny_cpu.yaml",
        [
            f"data.train={shards}",
            "data.eval=null",
            "data.eval_permille=0",
            f"train.output_dir={out}",
            "train.eval_every=0",
            *extra,
        ],
    )


def loader_rate(cfg, workers: int, n_batches: int, match_grids=()) -> float:
    from vid2pair.trainer.data import build_train_loader, sample_spec

    cfg.data.num_workers = workers
    loader = build_train_loader(cfg, sample_spec(cfg, match_grids))
    it = iter(loader)
    for _ in range(max(2, workers * 2)):  # warm-up: worker start, first shard open
        next(it)
    t = time.perf_counter()
    for _ in range(n_batches):
        next(it)
    dt = time.perf_counter() - t
    del it, loader
    return n_batches * cfg.data.batch_size / dt


def step_rate(cfg, n_steps: int) -> float:
    from vid2pair.trainer.data import build_train_loader, sample_spec
    from vid2pair.trainer.models import build_model

    cfg.data.num_workers = 0
    batch = next(iter(build_train_loader(cfg, sample_spec(cfg))))
    torch.manual_seed(0)
    model = build_model(cfg)
    opt = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-4)

    def step():
        loss, _ = model(batch)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(n_steps):
        step()
    return n_steps * cfg.data.batch_size / (time.perf_counter() - t)


def loop_rate(cfg, n_steps: int) -> dict:
    from vid2pair.trainer.train import train

    cfg.train.max_steps = n_steps
    cfg.train.log_every = max(1, n_steps // 2)
    cfg.train.ckpt_every = 10**9
    with contextlib.redirect_stdout(sys.stderr):
        s = train(cfg)
    return s["last"]  # the second half of the run: warm-up excluded


# --------------------------------------------------------------------------- memory


def _fake_batch(cfg, model, device="meta"):
    H, W = cfg.model.resolution
    b = cfg.data.batch_size
    from vid2pair.trainer.config import signal_channels

    batch = {
        "src": torch.zeros(b, 3, H, W, device=device),
        "tgt": torch.zeros(b, 3, H, W, device=device),
        "signal": torch.zeros(b, signal_channels(cfg.task), H, W, device=device),
    }
    for h, w in model.match_grids:
        batch[f"match_idx_{h}x{w}"] = torch.zeros(b, h * w, dtype=torch.long, device=device)
    return batch


class _SavedBytes:
    """Bytes autograd saves for backward (de-duplicated by base tensor), per checkpointable block too."""

    def __init__(self, block_types):
        self.total = 0
        self.seen: set = set()
        self.keep: list = []
        self.block_types = block_types
        self.stack: list = []
        self.per_block: dict = {}

    def pack(self, t):
        base = t._base if t._base is not None else t
        if id(base) not in self.seen:
            self.seen.add(id(base))
            self.keep.append(base)  # keeps ids unique while counting
            nbytes = base.numel() * base.element_size()
            self.total += nbytes
            if self.stack:
                self.per_block[self.stack[-1]] = self.per_block.get(self.stack[-1], 0) + nbytes
        return t

    def attach(self, root):
        hooks = []

        def enter(name):
            def pre(mod, args):
                self.stack.append(name)

            return pre

        def leave(mod, args, out):
            self.stack.pop()  # returns None: the output is kept

        for name, m in root.named_modules():
            if isinstance(m, self.block_types):
                hooks.append(m.register_forward_pre_hook(enter(name)))
                hooks.append(m.register_forward_hook(leave))
        return hooks


class _FusedSDPA(torch.autograd.Function):
    """Stands in for a fused (flash / memory-efficient) attention kernel during the count: it saves
    what those kernels keep for backward - q, k, v, the output and the fp32 log-sum-exp - instead of
    the N x N probabilities the math fallback (the only one on ``meta``) would save."""

    @staticmethod
    def forward(ctx, q, k, v, scale):
        with torch.no_grad():
            out = _REAL_SDPA(q, k, v, scale=scale)
        lse = torch.empty(q.shape[:-1], dtype=torch.float32, device=q.device)
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g):  # never called: the estimate only runs the forward
        raise NotImplementedError


_REAL_SDPA = torch.nn.functional.scaled_dot_product_attention


def _fused_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kw):
    if attn_mask is not None or is_causal or dropout_p:
        return _REAL_SDPA(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kw)
    return _FusedSDPA.apply(q, k, v, scale)


def memory_estimate(preset: Path, batch_size=None) -> dict:
    from diffusers.models.attention import BasicTransformerBlock
    from diffusers.models.resnet import SpatioTemporalResBlock

    from vid2pair.trainer.config import load_train_config, resolve_grad_accum
    from vid2pair.trainer.models.framepainter import FramePainterModel

    over = [
        "model.framepainter.init=svd_random",
        "model.framepainter.frozen_dtype=bf16",
        "data.train=unused",
        "train.total_batch_size=null",
    ]
    if batch_size:
        over.append(f"data.batch_size={batch_size}")
    cfg = load_train_config(preset, over)
    with torch.device("meta"):
        model = FramePainterModel(cfg)
    model = model.to("meta")  # a few legacy-constructed parameters ignore the device context
    groups = {
        "unet (SVD)": [p for n, p in model.unet.named_parameters() if ".processor." not in n],
        "matching projections": [p for n, p in model.unet.named_parameters() if ".processor." in n],
        "control encoder": list(model.control.parameters()),
        "vae (frozen)": list(model.vae.parameters()),
        "clip image encoder (frozen)": list(model.image_encoder.parameters()),
    }
    counts = {k: sum(p.numel() for p in v) for k, v in groups.items()}
    n_train = sum(p.numel() for _, p in model.trainable_named_parameters())
    n_frozen = counts["vae (frozen)"] + counts["clip image encoder (frozen)"]
    ema = cfg.train.ema_decay is not None
    states = {
        "trained weights fp32 (4 B)": 4 * n_train,
        "gradients fp32 (4 B)": 4 * n_train,
        "AdamW moments fp32 (8 B)": 8 * n_train,
        "frozen VAE + CLIP bf16 (2 B)": 2 * n_frozen,
    }
    if ema:
        states["EMA fp32 (4 B)"] = 4 * n_train
    # activations: one training forward on meta tensors, compute dtype bf16 (autocast's matmul dtype)
    model.unet.to(torch.bfloat16)
    model.control.to(torch.bfloat16)
    batch = _fake_batch(cfg, model)
    batch["signal"] = batch["signal"].to(torch.bfloat16)
    acts = {}
    for gc in (True, False):
        if gc:
            model.unet.enable_gradient_checkpointing(gradient_checkpointing_func=model._checkpoint)
        else:
            model.unet.disable_gradient_checkpointing()
        rec = _SavedBytes((SpatioTemporalResBlock, BasicTransformerBlock))
        hooks = rec.attach(model.unet)
        torch.nn.functional.scaled_dot_product_attention = _fused_sdpa
        try:
            with torch.autograd.graph.saved_tensors_hooks(rec.pack, lambda t: t):
                loss, _ = model(batch)
        finally:
            torch.nn.functional.scaled_dot_product_attention = _REAL_SDPA
            for h in hooks:
                h.remove()
        acts[gc] = rec
    outside = acts[True].total
    largest_block = max(acts[False].per_block.values())
    act_gc = outside + 2 * largest_block  # + one block recomputed in backward and its activation grads
    act_nogc = acts[False].total
    B = cfg.data.batch_size
    static = sum(states.values())
    gc_on = cfg.model.framepainter.gradient_checkpointing
    act = act_gc if gc_on else act_nogc
    total = static + act
    return {
        "preset": str(preset),
        "resolution": cfg.model.resolution,
        "batch_per_gpu": B,
        "grad_accum_on_1_gpu": resolve_grad_accum(cfg, 1) if cfg.train.total_batch_size else None,
        "params": counts,
        "params_trained": n_train,
        "states_bytes": states,
        "activations_gc_bytes": act_gc,
        "activations_no_gc_bytes": act_nogc,
        "activations_gc_parts": {
            "saved outside checkpointed blocks": outside,
            "largest block (recompute + grads)": 2 * largest_block,
        },
        "match_grids": model.match_grids,
        "gradient_checkpointing": gc_on,
        "ema": ema,
        "total_bytes": total,
        "total_with_20pct_overhead_bytes": int(total * 1.2),
    }


def print_memory(m: dict) -> None:
    print(
        f"\nGPU memory estimate: {m['preset']}  ({m['resolution'][0]}x{m['resolution'][1]}, "
        f"2 frames, batch {m['batch_per_gpu']} per GPU, bf16 autocast)"
    )
    for k, v in m["params"].items():
        print(f"  params {k:32s} {v / 1e6:10.1f} M")
    print(f"  params trained                          {m['params_trained'] / 1e6:10.1f} M")
    for k, v in m["states_bytes"].items():
        print(f"  {k:40s} {v / GiB:8.2f} GiB")
    print(
        f"  activations, gradient checkpointing on  {m['activations_gc_bytes'] / GiB:8.2f} GiB  "
        f"({', '.join(f'{k} {v / GiB:.2f}' for k, v in m['activations_gc_parts'].items())})"
    )
    print(f"  activations, gradient checkpointing off {m['activations_no_gc_bytes'] / GiB:8.2f} GiB")
    print(f"  matching supervised at token grids {m['match_grids']}")
    print(
        f"  TOTAL (checkpointing {'on' if m['gradient_checkpointing'] else 'off'}, EMA "
        f"{'on' if m['ema'] else 'off'}): {m['total_bytes'] / GiB:.1f} GiB; with ~20 % allocator/"
        f"workspace overhead {m['total_with_20pct_overhead_bytes'] / GiB:.1f} GiB"
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shards", help="shard dir / glob (default: build the demo in a temp dir)")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batches", type=int, default=40, help="loader batches timed per worker count")
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the training process")
    ap.add_argument("--memory-only", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--preset", default=str(ROOT / "configs" / "train_framepainter_sketch.yaml"))
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args(argv)
    import logging

    logging.basicConfig(level=logging.WARNING)
    results: dict = {}
    if not a.memory_only:
        torch.set_num_threads(a.threads)
        with tempfile.TemporaryDirectory() as tmp:
            if a.shards:
                shards = Path(a.shards)
            else:
                from vid2pair.trainer.testing import demo_shards

                print("building the demo shards ...", file=sys.stderr)
                shards = demo_shards(Path(tmp) / "demo")
            cfg = tiny_cfg(shards, Path(tmp) / "run", f"train.num_threads={a.threads}")
            H, W = cfg.model.resolution
            print(f"tiny model, {H}x{W}, batch {cfg.data.batch_size}, {a.threads} torch threads, task {cfg.task}, CPU")
            rates = {}
            for w in a.workers:
                rates[w] = loader_rate(tiny_cfg(shards, Path(tmp) / "run"), w, a.batches)
                print(f"  loader alone, {w} worker(s):          {rates[w]:8.1f} samples/s")
            step = step_rate(tiny_cfg(shards, Path(tmp) / "run"), a.steps)
            print(f"  train step alone (fixed batch):       {step:8.1f} samples/s")
            loop = loop_rate(tiny_cfg(shards, Path(tmp) / "run2", f"train.num_threads={a.threads}"), a.steps)
            print(
                f"  training loop (loader + step):        {loop['samples_per_s']:8.1f} samples/s, "
                f"waiting for data {100 * loop['data_wait_frac']:.1f} % of the time "
                f"({cfg.data.num_workers} worker)"
            )
            verdict = "not the bottleneck" if min(rates[w] for w in rates if w > 0) > 2 * step else "THE BOTTLENECK"
            print(f"  -> the loader is {verdict}")
            results["throughput"] = {"loader_samples_per_s": rates, "step_samples_per_s": step, "loop": loop}
            # the FramePainter presets' decode work: 576x1024 images + signal + correspondences
            from vid2pair.trainer.config import load_train_config
            from vid2pair.trainer.models.framepainter import supervised_grids

            fp_rates = {}
            for task in ("sketch", "drag"):
                fcfg = load_train_config(
                    Path(a.preset),
                    [f"data.train={shards}", "data.eval_permille=0", f"task={task}", "data.batch_size=1"],
                )
                grids = supervised_grids(fcfg.model.framepainter, fcfg.model.resolution)
                fp_rates[task] = loader_rate(fcfg, 1, a.batches, grids)
                print(
                    f"  loader alone, framepainter {task} spec ({fcfg.model.resolution[0]}x"
                    f"{fcfg.model.resolution[1]}, {len(grids)} matching grids), 1 worker: "
                    f"{fp_rates[task]:6.1f} samples/s"
                )
            results["throughput"]["framepainter_loader_1_worker"] = fp_rates
    if not a.skip_memory:
        m = memory_estimate(Path(a.preset))
        print_memory(m)
        results["memory"] = m
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
