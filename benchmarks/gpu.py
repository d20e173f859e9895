"""The GPU path at the papers' settings, with random weights (the same compute as the real ones).

    python benchmarks/gpu.py [--budget-s 480] [--cotracker-hub DIR] [--json out.json]
    python benchmarks/gpu.py --smoke          # every section on CPU at toy sizes (CI checks it runs)

Prints, each on its own line (a section that fails prints why and the others go on):

* per stage, pairs/s on the GPU: decode (CPU) at 576x1024; SEA-RAFT-M bf16 (batched); RAFT-L
  chained (Magic Fixup); CoTracker3 offline fp16 at 24 frames x one query per 8x8 token, and its
  cost against query count and frame count (needs a local co-tracker checkout, ``--cotracker-hub``:
  the code is not on PyPI); SAM ViT-H automatic masks; DPT-Large; the softmax splat;
* the whole Ray pipeline on one GPU (framepainter preset, SEA-RAFT as two actors of 0.5 GPU, the
  coarse edit on CUDA): pairs/s, GPU utilisation sampled with nvidia-smi, peak GPU memory, and
  whether CPU decoding starves the GPU;
* 50 steps of the FramePainter trainer at 576x1024, batch 1, bf16, with a randomly initialised
  SVD U-Net (``model.framepainter.init=svd_random``): samples/s and peak memory (a smaller
  resolution when the full one does not fit, said so);
* a comparison with Magic Fixup's scale: 12 M clips in one day on 64 GPUs is 2.2 clips/s per GPU.

Without CUDA (and without ``--smoke``) it says it needs a GPU and exits 0.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MF_RATE = 12e6 / (24 * 3600) / 64  # clips/s per GPU at Magic Fixup's scale


class Bench:
    def __init__(self, smoke: bool, budget_s: float):
        import torch

        self.smoke, self.t0, self.budget = smoke, time.time(), budget_s
        self.dev = "cuda" if (torch.cuda.is_available() and not smoke) else "cpu"
        self.out: dict = {"device": torch.cuda.get_device_name(0) if self.dev == "cuda" else "cpu (smoke)"}
        self.tmp = Path(tempfile.mkdtemp(prefix="vid2pair-gpu-"))
        self.H, self.W = (128, 160) if smoke else (576, 1024)

    def left(self) -> float:
        return self.budget - (time.time() - self.t0)

    def section(self, name: str, fn) -> None:
        if self.left() < 20:
            print(f"{name}: skipped (time budget spent)")
            return
        t = time.time()
        try:
            res = fn()
            self.out[name] = res
            print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in res.items()) + f"  [{time.time() - t:.0f} s]")
        except Exception as e:  # one section failing must not hide the others
            self.out[name] = {"error": f"{type(e).__name__}: {e}"[:400]}
            print(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")
        sys.stdout.flush()

    def sync(self):
        import torch

        if self.dev == "cuda":
            torch.cuda.synchronize()

    def timed(self, fn, n: int) -> float:
        """Seconds per call of ``fn`` (one warm-up call, then ``n`` timed)."""
        fn()
        self.sync()
        t = time.perf_counter()
        for _ in range(n):
            fn()
        self.sync()
        return (time.perf_counter() - t) / n

    def frames(self, n: int, h=None, w=None) -> np.ndarray:
        from vid2pair.pipeline.synthetic import make_clip

        return make_clip(width=w or self.W, height=h or self.H, n_frames=n, fps=24, seed=1).frames


# ---------------------------------------------------------------- sections


def s_decode(b: Bench) -> dict:
    """Decode the 24 frames a FramePainter pair needs, resized + cropped to 576x1024 (CPU)."""
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.synthetic import write_video
    from vid2pair.stages import decode

    src_w, src_h = (128, 96) if b.smoke else (1280, 720)
    path = write_video(b.frames(48, src_h, src_w), b.tmp / "decode.mp4", 24)
    cfg = load_config("framepainter").frame
    if b.smoke:
        cfg.size = [b.H, b.W]
    dw, dh = decode.decode_size(src_w, src_h, cfg)
    v = decode.Video(str(path))
    for _ in v.scan(0, None, decode.scaled_size(src_w, src_h, 128)):
        pass
    idx = np.linspace(0, 47, 24).round().astype(int)
    sec = b.timed(lambda: decode.apply_frame_policy(v.read(idx, (dw, dh)), cfg), 2 if b.smoke else 5)
    return {"pairs/s": round(1 / sec, 2), "frames/s": round(24 / sec, 1), "source": f"{src_w}x{src_h} h264"}


def _random_ckpt(b: Bench, name: str) -> str:
    import ptlflow
    import torch

    p = b.tmp / f"{name}-random.ckpt"
    if not p.exists():
        torch.save({"state_dict": ptlflow.get_model(name).state_dict()}, p)
    return str(p)


def s_sea_raft(b: Bench) -> dict:
    from vid2pair.stages.flow import PtlflowSEARAFT

    bs = 2 if b.smoke else 8
    be = PtlflowSEARAFT(
        "m",
        _random_ckpt(b, "sea_raft_m"),
        device=b.dev,
        precision="fp32" if b.smoke else "bf16",
        batch_size=bs,
        iters=2 if b.smoke else None,
    )
    fr = b.frames(bs + 1)
    sec = b.timed(lambda: be(fr[:bs], fr[1 : bs + 1]), 1 if b.smoke else 5)
    return {"pairs/s": round(bs / sec, 2), "batch": bs, "size": f"{b.H}x{b.W}", "precision": "bf16"}


def s_raft_chained(b: Bench) -> dict:
    """Magic Fixup: RAFT-Large on 512x512 (at 520x520), chained over 10 hops (batched)."""
    from vid2pair.stages.flow import TorchvisionRAFT, compose_flows

    hw = 64 if b.smoke else 512
    be = TorchvisionRAFT(
        "large",
        random_init=True,
        device=b.dev,
        batch_size=10,
        inference_size=None if b.smoke else (520, 520),
        iters=2 if b.smoke else None,
    )
    fr = b.frames(11, hw, hw)

    def pair():
        hops = be(fr[:-1], fr[1:])
        f = hops[0]
        for h in hops[1:]:
            f = compose_flows(f, h)
        return f

    sec = b.timed(pair, 1 if b.smoke else 2)
    return {"pairs/s": round(1 / sec, 3), "hops": 10, "size": f"{hw}x{hw}"}


def s_cotracker(b: Bench, hub: str | None) -> dict:
    if not hub:
        return {"skipped": "needs a local co-tracker checkout: --cotracker-hub DIR (the code is not on PyPI)"}
    import torch

    pred = torch.hub.load(hub, "cotracker3_offline", pretrained=False, source="local").to(b.dev).eval()
    res = {}

    def run(t: int, n: int) -> float:
        video = torch.rand(1, t, 3, b.H, b.W, device=b.dev) * 255
        q = torch.zeros(1, n, 3, device=b.dev)
        q[..., 1] = torch.rand(n, device=b.dev) * (b.W - 1)
        q[..., 2] = torch.rand(n, device=b.dev) * (b.H - 1)

        def call():
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16, enabled=b.dev == "cuda"):
                pred(video, queries=q, backward_tracking=False)

        return b.timed(call, 1)

    tokens = (b.H // 8) * (b.W // 8)
    res["pairs/s (24 frames, 1 query / 8x8 token)"] = round(1 / run(24, tokens), 3)
    res["s per pair vs queries"] = {n: round(run(24, n), 3) for n in (1024, 4096, tokens)}
    res["s per pair vs frames"] = {t: round(run(t, tokens), 3) for t in (8, 16, 24)}
    return res


def s_sam(b: Bench) -> dict:
    import torch
    from segment_anything import SamAutomaticMaskGenerator, sam_model_registry

    if b.smoke:  # SAM's image encoder always runs at 1024x1024: ~30 s even for ViT-B on a CPU
        return {"skipped": "smoke: SAM's encoder runs at 1024x1024 whatever the image (test_collage.py covers it)"}
    kind = "vit_b" if b.smoke else "vit_h"
    sam = sam_model_registry[kind](checkpoint=None).to(b.dev).eval()
    gen = SamAutomaticMaskGenerator(sam, points_per_side=4 if b.smoke else 32)
    img = b.frames(1, 64 if b.smoke else 512, 64 if b.smoke else 512)[0]
    with torch.inference_mode():
        sec = b.timed(lambda: gen.generate(img), 1)
    return {
        "pairs/s": round(1 / sec, 3),
        "model": kind,
        "points_per_side": 4 if b.smoke else 32,
        "note": "random weights give few masks; the real ones cost the same per prompt grid",
    }


def s_dpt(b: Bench) -> dict:
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    cfg = (
        DPTConfig(
            hidden_size=32,
            num_hidden_layers=4,
            num_attention_heads=2,
            intermediate_size=37,
            image_size=64,
            patch_size=16,
            neck_hidden_sizes=[16, 32, 64, 128],
            fusion_hidden_size=32,
            backbone_out_indices=[0, 1, 2, 3],
        )
        if b.smoke
        else DPTConfig()
    )
    m = DPTForDepthEstimation(cfg).to(b.dev).eval()
    x = torch.rand(1, 3, 64 if b.smoke else 384, 64 if b.smoke else 384, device=b.dev)
    with torch.inference_mode():
        sec = b.timed(lambda: m(pixel_values=x), 1 if b.smoke else 5)
    return {
        "pairs/s": round(1 / sec, 2),
        "model": "DPT-Large config (random)" if not b.smoke else "tiny DPT",
        "input": "384x384",
    }


def s_splat(b: Bench) -> dict:
    import torch

    from vid2pair.stages.splat import magicfixup_metric, splat_with_density

    bs = 2 if b.smoke else 8
    img = torch.rand(bs, 3, b.H, b.W, device=b.dev)
    flow = torch.randn(bs, 2, b.H, b.W, device=b.dev) * 10
    with torch.inference_mode():
        metric = magicfixup_metric(img, img, flow)
        sec = b.timed(lambda: splat_with_density(img, flow, metric, "soft"), 2 if b.smoke else 10)
    return {"pairs/s": round(bs / sec, 1), "batch": bs, "size": f"{b.H}x{b.W}"}


class _GpuSampler:
    """nvidia-smi every 0.5 s: utilisation and memory used."""

    def __init__(self):
        self.util, self.mem, self._stop = [], [], threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                r = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits"],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                u, m = (float(x) for x in r.stdout.strip().splitlines()[0].split(","))
                self.util.append(u)
                self.mem.append(m)
            except Exception:
                pass
            self._stop.wait(0.5)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *a):
        self._stop.set()
        self.t.join(6)


def s_pipeline(b: Bench) -> dict:
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.runners import build
    from vid2pair.pipeline.synthetic import make_demo_corpus

    videos = b.tmp / "videos"
    n_clips = 2 if b.smoke else 16
    w, h = (128, 96) if b.smoke else (1280, 720)
    make_demo_corpus(videos, n_static=n_clips, n_moving_camera=0, seed=3, width=w, height=h, n_frames=60, fps=12)
    # random weights give random flows: the motion rules and the quality stage would reject every pair
    # before the later stages run, so they are off here
    rules_off = [
        "motion.min_moving_frac=null",
        "motion.max_p99=null",
        "motion.max_large_frac=null",
        "quality.enabled=false",
        "coarse.min_coverage=null",
    ]
    over = [
        "runner.progress=false",
        "runner.check_weights=false",
        "track.enabled=false",
        *rules_off,
        f"flow.weights={_random_ckpt(b, 'sea_raft_m')}",
        "flow.actors=2",
        f"flow.num_gpus={0.5 if b.dev == 'cuda' else 0}",
        f"coarse.device={b.dev}",
        "pairs.per_shot=4",
    ]
    if b.smoke:
        over += [f"frame.size=[{b.H}, {b.W}]", "flow.iters=2", "runner.name=local"]
    cfg = load_config("framepainter", over)
    t = time.time()
    sampler = _GpuSampler() if b.dev == "cuda" else None
    if sampler:
        with sampler:
            s = build(cfg, str(videos), b.tmp / "out", log_summary=False)
    else:
        s = build(cfg, str(videos), b.tmp / "out", log_summary=False)
    wall = time.time() - t
    res = {
        "pairs/s": round(s["samples"] / wall, 3),
        "samples": s["samples"],
        "clips": n_clips,
        "wall_s": round(wall, 1),
        "note": "tracking off (CoTracker3 needs its hub code); SEA-RAFT 2 x 0.5 GPU; "
        "motion and quality rules off (random weights)",
    }
    if sampler and sampler.util:
        util = float(np.mean(sampler.util))
        res.update(
            {
                "gpu_util_mean_%": round(util, 1),
                "gpu_util_p90_%": round(float(np.percentile(sampler.util, 90)), 1),
                "peak_gpu_mem_MiB": round(max(sampler.mem)),
                "decode_starves_gpu": util < 50,
            }
        )
    clip_rate = s["samples"] / wall / 4  # per_shot 4, one shot per synthetic clip
    res["clips/s vs Magic Fixup's 2.2 per GPU"] = round(clip_rate / MF_RATE, 3)
    return res


def s_trainer(b: Bench) -> dict:
    import torch

    from vid2pair.trainer.config import load_train_config, signal_channels
    from vid2pair.trainer.models.framepainter import FramePainterModel

    over = ["data.train=unused", "train.total_batch_size=null", "data.batch_size=1"]
    if b.smoke:
        over += ["model.framepainter.init=tiny_random", "model.resolution=[64, 64]"]
    else:
        over += ["model.framepainter.init=svd_random", "model.framepainter.frozen_dtype=bf16"]
    cfg = load_train_config("train_framepainter_sketch", over)
    dev = torch.device(b.dev)
    note = ""
    for res_hw in [cfg.model.resolution] if b.smoke else [[576, 1024], [320, 576]]:
        cfg.model.resolution = list(res_hw)
        try:
            model = FramePainterModel(cfg, dev).to(dev)
            opt = torch.optim.AdamW([p for _, p in model.trainable_named_parameters()], lr=1e-5)
            H, W = res_hw
            batch = {
                "src": torch.rand(1, 3, H, W, device=dev) * 2 - 1,
                "tgt": torch.rand(1, 3, H, W, device=dev) * 2 - 1,
                "signal": torch.rand(1, signal_channels(cfg.task), H, W, device=dev),
            }
            for h, w in model.match_grids:
                batch[f"match_idx_{h}x{w}"] = torch.randint(0, h * w, (1, h * w), device=dev)
            if dev.type == "cuda":
                torch.cuda.reset_peak_memory_stats()

            def step(model=model, batch=batch, opt=opt):
                with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=dev.type == "cuda"):
                    loss, _ = model(batch)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            n = 2 if b.smoke else 50
            sec = b.timed(step, n)
            out = {"samples/s": round(1 / sec, 3), "steps": n, "resolution": f"{H}x{W}", "batch": 1}
            if dev.type == "cuda":
                out["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            if note:
                out["note"] = note
            return out
        except torch.cuda.OutOfMemoryError as e:
            note = f"576x1024 did not fit ({str(e)[:80]}); measured at a smaller resolution"
            del model
            torch.cuda.empty_cache()
    raise RuntimeError(note or "no resolution fit")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="every section on CPU at toy sizes (checks it runs)")
    ap.add_argument("--budget-s", type=float, default=480.0, help="stop starting sections after this (default 480)")
    ap.add_argument("--cotracker-hub", help="a local co-tracker checkout (hubconf.py) for the CoTracker3 section")
    ap.add_argument("--json", help="also write the figures to this file")
    a = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available() and not a.smoke:
        print(
            "benchmarks/gpu.py needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured. "
            "`--smoke` runs every section on CPU at toy sizes."
        )
        return 0
    b = Bench(a.smoke, a.budget_s)
    print(f"device: {b.out['device']}; torch {torch.__version__}; budget {a.budget_s:.0f} s")
    b.section("decode (CPU, 24 frames to 576x1024)", lambda: s_decode(b))
    b.section("SEA-RAFT-M bf16", lambda: s_sea_raft(b))
    b.section("RAFT-L chained (Magic Fixup)", lambda: s_raft_chained(b))
    b.section("CoTracker3 offline fp16", lambda: s_cotracker(b, a.cotracker_hub))
    b.section("softmax splat", lambda: s_splat(b))
    b.section("DPT-Large", lambda: s_dpt(b))
    b.section("SAM automatic masks", lambda: s_sam(b))
    b.section("Ray pipeline, one GPU", lambda: s_pipeline(b))
    b.section("FramePainter trainer, 50 steps", lambda: s_trainer(b))
    print(
        f"Magic Fixup's scale: 12 M clips / day on 64 GPUs = {MF_RATE:.2f} clips/s per GPU "
        f"(see the Ray pipeline line for ours)"
    )
    print(f"total {time.time() - b.t0:.0f} s")
    if a.json:
        Path(a.json).write_text(json.dumps(b.out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
