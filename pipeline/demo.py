"""``vid2pair demo``: synthetic clips (one with camera motion, which must be rejected) -> shards."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from vid2pair.pipeline.config import load_config


def run_demo(output="demo_output", overrides=(), n_static: int = 4, n_moving_camera: int = 1) -> dict:
    from vid2pair.pipeline.runners import build
    from vid2pair.pipeline.synthetic import make_demo_corpus

    out = Path(output)
    cfg = load_config("demo", list(overrides))  # validate before generating anything
    videos = out / "videos"
    want = n_static + n_moving_camera
    have = sorted(videos.glob("*.mp4")) if videos.is_dir() else []
    if len(have) != want:
        for p in have:  # another clip count than last time: a fresh corpus, and a fresh dataset from it
            p.unlink()
        if (out / "dataset" / "run.json").is_file():
            shutil.rmtree(out / "dataset")
        print(f"demo: writing {want} synthetic clips to {videos}", file=sys.stderr)
        make_demo_corpus(videos, n_static=n_static, n_moving_camera=n_moving_camera, seed=cfg.seed)
    summary = build(cfg, str(videos), out / "dataset")
    print(
        f"\ndemo dataset: {(out / 'dataset').resolve()}\n"
        f"  shards:  {(out / 'dataset' / 'shards').resolve()}\n"
        f"  summary: {(out / 'dataset' / 'summary.json').resolve()}\n"
        f"  look at it: vid2pair inspect {out / 'dataset'}"
    )
    return summary
