"""Signal-stage costs, measured in one run on synthetic clips whose true motion is known.

Prints:
  * flow_chain tracking: ms per pair and median / p90 point error (px, against the clip's exact
    tracks) at the demo (240x320) and FramePainter (576x1024) resolutions, Δt = 2 s at 12 fps;
  * softmax splat (torch, CPU) in ms per megapixel against the per-pixel reference
    (``stages.splat.reference_splat_numpy``), and the two agreeing;
  * collage ms per pair per backend: felzenszwalb / slic segments with the weight-free occlusion
    order at both resolutions; SAM vit_b automatic masks and DPT depth with RANDOM weights (the
    published weights cannot be downloaded here: same architecture, so the same cost);
  * every stage's share of the in-process pipeline time (demo preset, all signal stages on) at
    both resolutions.

Usage: python benchmarks/signals.py [--skip-models] [--skip-fp] [--json out.json]
One OpenCV / torch thread throughout: every figure is per core.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))

RES = {"demo": (240, 320), "framepainter": (576, 1024)}
FPS, GAP = 12.0, 24  # Δt = 2 s


def _clip(h, w, seed=3):
    from vid2pair.pipeline.synthetic import make_clip

    return make_clip(width=w, height=h, n_frames=GAP + 1, fps=FPS, n_objects=2, seed=seed)


def bench_tracking(h, w, reps=2):
    from vid2pair.stages.track import FlowChainTracker, auto_grid_stride, query_grid

    clip = _clip(h, w)
    src_i, tgt_i = 0, GAP
    frames = clip.frames[::-1].copy()  # target first, source last
    q = query_grid(h, w, auto_grid_stride(h, w))
    gt, gt_vis = clip.track(q, tgt_i, src_i)
    tr = FlowChainTracker()
    tr([frames], q)  # warm (a batch of one clip)
    t0 = time.perf_counter()
    for _ in range(reps):
        xy, vis = tr([frames], q)
    ms = 1000 * (time.perf_counter() - t0) / reps
    ok = gt_vis & vis[0]
    err = np.linalg.norm(xy[0][ok] - gt[ok], axis=1)
    moving = np.linalg.norm(gt - q, axis=1) > 1.0
    err_mov = np.linalg.norm(xy[0][ok & moving] - gt[ok & moving], axis=1)
    return {
        "ms": ms,
        "points": len(q),
        "median_px": float(np.median(err)),
        "p90_px": float(np.percentile(err, 90)),
        "moving_median_px": float(np.median(err_mov)) if len(err_mov) else float("nan"),
        "hops": len(tr.last_info[0]["hops"]),
        "visible_frac": float(vis[0].mean()),
    }


def bench_splat(reps=3):
    import torch

    from vid2pair.stages.splat import magicfixup_metric, reference_splat_numpy, softmax_splat

    clip = _clip(*RES["framepainter"])
    flow, _ = clip.flow(0, GAP)
    src = torch.from_numpy(clip.frames[0]).permute(2, 0, 1)[None].float() / 255
    tgt = torch.from_numpy(clip.frames[GAP]).permute(2, 0, 1)[None].float() / 255
    fl = torch.from_numpy(flow).permute(2, 0, 1)[None]
    z = magicfixup_metric(src, tgt, fl)
    softmax_splat(src, fl, z)
    t0 = time.perf_counter()
    for _ in range(reps):
        softmax_splat(src, fl, z)
    mp = src.shape[-1] * src.shape[-2] / 1e6
    torch_ms_mp = 1000 * (time.perf_counter() - t0) / reps / mp
    # the reference is a per-pixel Python loop: time it on a 48x64 crop around the fastest motion
    mag = np.linalg.norm(flow, axis=-1)
    cy, cx = np.unravel_index(int(np.argmax(mag)), mag.shape)
    y0, x0 = int(np.clip(cy - 24, 0, mag.shape[0] - 48)), int(np.clip(cx - 32, 0, mag.shape[1] - 64))
    sl = (slice(None), slice(None), slice(y0, y0 + 48), slice(x0, x0 + 64))
    s_img, s_fl, s_z = src[sl].contiguous(), fl[sl].contiguous(), z[sl].contiguous()
    t0 = time.perf_counter()
    ref = reference_splat_numpy(s_img.numpy(), s_fl.numpy(), s_z.numpy(), mode="soft")
    ref_ms_mp = 1000 * (time.perf_counter() - t0) / (48 * 64 / 1e6)
    t0 = time.perf_counter()
    for _ in range(20):
        small = softmax_splat(s_img, s_fl, s_z)
    small_ms_mp = 1000 * (time.perf_counter() - t0) / 20 / (48 * 64 / 1e6)
    diff = float(np.abs(small.numpy() - ref).max())
    return {
        "torch_ms_per_mp_576x1024": torch_ms_mp,
        "torch_ms_per_mp_48x64": small_ms_mp,
        "reference_ms_per_mp_48x64": ref_ms_mp,
        "max_abs_diff": diff,
    }


def bench_collage(h, w, segmenter, depth="occlusion", sam_model=None, dpt_model=None, reps=1):
    from vid2pair.stages.collage import CollageConfig, make_collage
    from vid2pair.stages.depth import make_depth
    from vid2pair.stages.segment import make_segmenter

    clip = _clip(h, w)
    flow, _ = clip.flow(0, GAP)
    src, tgt = clip.frames[0], clip.frames[GAP]
    cfg = CollageConfig(segmenter=segmenter, depth=depth, device="cpu")
    seg = make_segmenter(cfg, model=sam_model)
    dep = make_depth(cfg, model=dpt_model)
    out = {}
    for _ in range(reps):
        t0 = time.perf_counter()
        labels = seg(src, flow)
        t1 = time.perf_counter()
        res = make_collage(src, tgt, flow, labels, depth_model=dep, cfg=cfg, rng=np.random.default_rng(0))
        t2 = time.perf_counter()
        out = {
            "segment_ms": 1000 * (t1 - t0),
            **{f"{k}_ms": v for k, v in res["ms"].items()},
            "total_ms": 1000 * (t2 - t0),
            "segments": res["meta"]["n_segments"],
        }
    return out


def random_sam():
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    return sam_model_registry["vit_b"](checkpoint=None)


def random_dpt():
    import torch
    from transformers import DPTConfig, DPTForDepthEstimation

    torch.manual_seed(0)
    # dpt-hybrid-midas (the registered weights): ViT-B/16 on a BiT backbone
    cfg = DPTConfig(
        is_hybrid=True,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        backbone_out_indices=[2, 5, 8, 11],
        neck_hidden_sizes=[256, 512, 768, 768],
    )
    return DPTForDepthEstimation(cfg)


def stage_shares(h, w, n_clips=2):
    from throughput import stage_costs

    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.io import list_inputs, make_tasks
    from vid2pair.pipeline.synthetic import make_demo_corpus

    work = Path(tempfile.mkdtemp(prefix=f"v2p-sig-{h}x{w}-"))
    make_demo_corpus(work / "videos", n_static=n_clips, n_moving_camera=0, seed=5, width=w, height=h)
    cfg = load_config("demo", ["runner.progress=false", f"frame.size=[{h}, {w}]"])
    tasks, _ = make_tasks(list_inputs(str(work / "videos"), cfg.input.extensions), cfg.output.clips_per_shard)
    costs, n = stage_costs(copy.deepcopy(cfg), tasks)
    return costs, n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--skip-models", action="store_true", help="no SAM / DPT (random weights) collage timings")
    ap.add_argument("--skip-fp", action="store_true", help="demo resolution only")
    ap.add_argument("--json", help="also write the numbers here")
    a = ap.parse_args()

    from vid2pair.pipeline.runners import set_threads

    set_threads(1)
    res = {k: v for k, v in RES.items() if not (a.skip_fp and k == "framepainter")}
    out: dict = {"tracking": {}, "collage": {}, "shares": {}}

    for name, (h, w) in res.items():
        r = bench_tracking(h, w)
        out["tracking"][name] = r
        print(
            f"flow_chain tracking {w}x{h} ({r['points']} points, {r['hops']} hops, Δt {GAP / FPS:g} s): "
            f"{r['ms']:.0f} ms/pair; error median {r['median_px']:.2f} px, p90 {r['p90_px']:.2f} px "
            f"(moving points: median {r['moving_median_px']:.2f} px); {100 * r['visible_frac']:.0f} % visible"
        )

    s = bench_splat()
    out["splat"] = s
    print(
        f"softmax splat (soft, CPU): {s['torch_ms_per_mp_576x1024']:.0f} ms/MP at 1024x576, "
        f"{s['torch_ms_per_mp_48x64']:.0f} ms/MP at 64x48; per-pixel reference {s['reference_ms_per_mp_48x64']:.0f} "
        f"ms/MP at 64x48 -> {s['reference_ms_per_mp_48x64'] / s['torch_ms_per_mp_576x1024']:.0f}x; "
        f"max |diff| {s['max_abs_diff']:.1e}"
    )

    backends = [("felzenszwalb", "occlusion", None, None), ("slic", "occlusion", None, None)]
    if not a.skip_models:
        backends += [("sam", "occlusion", "sam", None), ("felzenszwalb", "dpt", None, "dpt")]
    models = {}
    for name, (h, w) in res.items():
        for seg, dep, sam, dpt in backends:
            if sam and "sam" not in models:
                models["sam"] = random_sam()
            if dpt and "dpt" not in models:
                models["dpt"] = random_dpt()
            r = bench_collage(h, w, seg, dep, sam_model=models.get(sam), dpt_model=models.get(dpt))
            out["collage"][f"{name}/{seg}+{dep}"] = r
            parts = ", ".join(f"{k[:-3]} {v:.0f}" for k, v in r.items() if k.endswith("_ms") and k != "total_ms")
            print(
                f"collage {w}x{h} {seg:>12} + {dep:<9}: {r['total_ms']:8.0f} ms/pair ({parts}; "
                f"{r['segments']} segments){'  [random weights]' if sam or dpt else ''}"
            )

    for name, (h, w) in res.items():
        costs, n = stage_shares(h, w)
        total = sum(costs.values())
        out["shares"][name] = {"ms_per_pair": costs, "pairs": n}
        print(f"pipeline stage shares at {w}x{h} (demo preset, in process, {n} pairs, {total:.0f} ms/pair):")
        for k, v in costs.items():
            print(f"  {k:<40} {v:8.1f} ms  {100 * v / total:5.1f} %")

    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
