"""Entry point for `ray job submit` (and KubeRay RayJob): builds shards on the cluster it runs in.

    ray job submit --address http://HEAD:8265 \
        --runtime-env-json '{"pip": ["/shared/wheels/vid2pair-0.1.0-py3-none-any.whl"]}' -- \
        python -m vid2pair.jobs.submit --config framepainter --input /shared/clips.txt --output /shared/fp

vid2pair must be installed on every node (the runtime_env above pip-installs the wheel built with
`pip wheel . --no-deps -w /shared/wheels`; or an image with it). Presets ship inside the package.

Inside a Ray job `ray.init()` attaches to the job's cluster (RAY_ADDRESS is set by the job
supervisor), so this is `vid2pair build --ray-address auto`. Paths must be visible to every node
(a shared filesystem, or s3:// / gs:// URIs).
Exit code 0 when the build finished (bad clips are rejects, not failures), 2 on a bad config.
"""

from __future__ import annotations

import os
import sys

from vid2pair.pipeline.cli import main


def run(argv: list[str]) -> int:
    if "--ray-address" not in argv:
        argv = argv + ["--ray-address", os.environ.get("RAY_ADDRESS", "auto")]
    if "--runner" not in argv:
        argv = argv + ["--runner", "ray"]
    return main(["build", *argv])


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
