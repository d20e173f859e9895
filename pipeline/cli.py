"""``vid2pair`` command line: build, demo, inspect, models."""

from __future__ import annotations

import argparse
import sys

from vid2pair import __version__
from vid2pair.pipeline.config import ConfigError, load_config


def _fail(msg: str) -> int:
    print(f"vid2pair: error: {msg}", file=sys.stderr)
    return 2


def cmd_build(a) -> int:
    from vid2pair.pipeline.io import InputError
    from vid2pair.pipeline.models import MissingWeightsError
    from vid2pair.pipeline.runners import Interrupted, ResourceError, build
    from vid2pair.pipeline.storage import OutputError

    overrides = list(a.set or [])
    if a.runner:
        overrides.append(f"runner.name={a.runner}")
    if a.ray_address:
        overrides.append(f"runner.ray_address={a.ray_address}")
    if a.no_progress:
        overrides.append("runner.progress=false")
    try:
        cfg = load_config(a.config, overrides)
        build(cfg, a.input, a.output)
    except (ConfigError, InputError, MissingWeightsError, OutputError, ResourceError) as e:
        return _fail(str(e))
    except Interrupted as e:
        print(f"vid2pair: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    return 0


def cmd_demo(a) -> int:
    from vid2pair.pipeline.demo import run_demo
    from vid2pair.pipeline.runners import Interrupted, ResourceError
    from vid2pair.pipeline.storage import OutputError

    overrides = list(a.set or [])
    if a.runner:
        overrides.append(f"runner.name={a.runner}")
    if a.clips < 1:
        return _fail(f"--clips {a.clips}: need at least 1 clip")
    try:
        run_demo(a.output, overrides=overrides, n_static=max(1, a.clips - 1), n_moving_camera=1 if a.clips > 1 else 0)
    except (ConfigError, OutputError, ResourceError) as e:
        return _fail(str(e))
    except Interrupted as e:
        print(f"vid2pair: {e}", file=sys.stderr)
        return 128 + int(e.signum)
    return 0


def cmd_inspect(a) -> int:
    from vid2pair.pipeline.inspection import inspect_output

    if a.key:
        from vid2pair.pipeline.qc import inspect_key

        try:
            text, png = inspect_key(a.output_dir, a.key)
        except (KeyError, FileNotFoundError) as e:
            return _fail(str(e).strip("'\""))
        print(text)
        return 0

    try:
        print(inspect_output(a.output_dir, n_keys=a.n))
    except FileNotFoundError as e:
        return _fail(str(e))
    return 0


def cmd_verify(a) -> int:
    from vid2pair.pipeline.verify import verify_output

    ok, report = verify_output(a.output_dir, deep=not a.quick)
    print(report)
    return 0 if ok else 1


def cmd_config(a) -> int:
    try:
        cfg = load_config(a.config, list(a.set or []))
    except ConfigError as e:
        return _fail(str(e))
    import yaml

    print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vid2pair", description="Raw video -> image-editing training pairs (WebDataset).")
    p.add_argument("--version", action="version", version=f"vid2pair {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True)

    b = sub.add_parser("build", help="build shards from videos")
    b.add_argument("--config", required=True, help="preset name or YAML path (configs/<preset>.yaml)")
    b.add_argument("--input", required=True, help="directory, glob, .txt list or .parquet of video paths")
    b.add_argument("--output", required=True, help="output directory")
    b.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a config key (repeatable)")
    b.add_argument("--runner", choices=["ray", "local"], help="default: the config's runner.name (ray)")
    b.add_argument("--ray-address", help="join an existing Ray cluster (e.g. auto or ray://host:10001)")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.set_defaults(func=cmd_build)

    d = sub.add_parser("demo", help="generate synthetic clips and build a small dataset from them")
    d.add_argument("--output", default="demo_output", help="output directory (default: demo_output)")
    d.add_argument("--set", action="append", metavar="KEY=VALUE")
    d.add_argument("--runner", choices=["ray", "local"])
    d.add_argument(
        "--clips",
        type=int,
        default=5,
        help="synthetic clips to generate (default 5: one filmed by a "
        "panning camera, the others static); more for training",
    )
    d.set_defaults(func=cmd_demo)

    i = sub.add_parser("inspect", help="counts, reject reasons and sample keys of an output directory")
    i.add_argument("output_dir")
    i.add_argument("-n", type=int, default=5, help="sample keys to show")
    i.add_argument("--key", help="one sample: print its meta and write a contact sheet to <out>/qc/<KEY>.png")
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("verify", help="check shards against the index (every key once, every file readable)")
    v.add_argument("output_dir")
    v.add_argument("--quick", action="store_true", help="don't decode members, only check keys")
    v.set_defaults(func=cmd_verify)

    c = sub.add_parser("config", help="print the fully resolved config (validates it)")
    c.add_argument("config")
    c.add_argument("--set", action="append", metavar="KEY=VALUE")
    c.set_defaults(func=cmd_config)

    from vid2pair.pipeline.evalset import evalset_add_subparsers
    from vid2pair.pipeline.models import models_add_subparser
    from vid2pair.pipeline.report import report_add_subparser
    from vid2pair.trainer.cli import train_add_subparser

    models_add_subparser(sub)
    report_add_subparser(sub)
    train_add_subparser(sub)
    evalset_add_subparsers(sub)
    return p


def main(argv=None) -> int:
    args = make_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
