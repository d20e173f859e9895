"""``vid2pair train`` / ``vid2pair eval`` (registered on the main CLI by :func:`train_add_subparser`).

Multi-GPU / multi-node: run the same command under torchrun, e.g.
``torchrun --nproc_per_node 8 -m vid2pair.trainer train --config configs/train_framepainter_sketch.yaml``
(or ``torchrun ... --no-python vid2pair train ...``); RANK / WORLD_SIZE / LOCAL_RANK come from it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def _fail(msg: str) -> int:
    print(f"vid2pair: error: {msg}", file=sys.stderr)
    return 2


def cmd_train(a) -> int:
    from vid2pair.pipeline.config import ConfigError
    from vid2pair.trainer.config import load_train_config
    from vid2pair.trainer.data import DataError

    try:
        cfg = load_train_config(a.config, list(a.set or []))
        if a.print_config:
            import yaml

            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
            return 0
        from vid2pair.trainer.train import train

        summary = train(cfg, resume=a.resume)
    except (ConfigError, DataError, FileExistsError, FileNotFoundError) as e:
        return _fail(str(e))
    if summary.get("last") and os.environ.get("RANK", "0") == "0":
        print(
            json.dumps(
                {"steps": summary["steps"], "loss": summary["last"].get("loss"), "output_dir": summary["output_dir"]}
            )
        )
    return 0


def cmd_eval(a) -> int:
    from vid2pair.pipeline.config import ConfigError
    from vid2pair.trainer.config import load_train_config
    from vid2pair.trainer.data import DataError

    try:
        cfg = load_train_config(a.config, list(a.set or []))
        from vid2pair.trainer.evaluate import evaluate

        report = evaluate(
            cfg,
            a.checkpoint,
            output=a.output,
            max_eval=a.max_eval,
            use_ema=None if a.ema is None else a.ema == "on",
            steps=a.steps,
            device=a.device,
        )
    except (ConfigError, DataError, FileNotFoundError) as e:
        return _fail(str(e))
    print(
        json.dumps({k: report[k] for k in ("checkpoint", "step", "n", "changed_frac", "scores", "skipped")}, indent=2)
    )
    return 0


def train_add_subparser(subparsers) -> None:
    """Register ``train`` and ``eval`` on the main CLI's subparsers."""
    t = subparsers.add_parser(
        "train",
        help="train a model on vid2pair shards (torchrun for multi-GPU)",
        description="Train the bundled tiny or FramePainter model (configs/train_*.yaml).",
    )
    t.add_argument("--config", required=True, help="trainer preset name or YAML path (configs/train_<name>.yaml)")
    t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    t.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in train.output_dir")
    t.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    t.set_defaults(func=cmd_train)

    e = subparsers.add_parser("eval", help="score a checkpoint on the held-out pairs (PSNR, SSIM, LPIPS, CLIP-I)")
    e.add_argument("--config", required=True, help="the trainer config the checkpoint was trained with")
    e.add_argument("--checkpoint", required=True, help="state.pt, a step-XXXXXXXX dir, or a run dir (newest)")
    e.add_argument("--set", action="append", metavar="KEY=VALUE")
    e.add_argument("--output", help="directory for eval.json and image grids (default: <checkpoint>/eval)")
    e.add_argument("--max-eval", type=int, help="at most this many pairs (default: data.max_eval)")
    e.add_argument("--ema", choices=["on", "off"], help="score the EMA weights (default: eval.use_ema)")
    e.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    e.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default: train.device")
    e.set_defaults(func=cmd_eval)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trainer", description="vid2pair trainer")
    sub = p.add_subparsers(dest="cmd", required=True)
    train_add_subparser(sub)
    args = p.parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
