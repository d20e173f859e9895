import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("VID2PAIR_SHARED_VIDEOS", ROOT.parent / "shared" / "videos"))


def shared_video(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"shared test video {p} not present")
    return p


def shared_inputs(tmp: Path, names) -> str:
    """A folder ``videos/`` of links to the shared clips: the clip ids (so the per-clip seeds and
    pairs) hash ``videos/<name>``, the same on every checkout, wherever ../shared is mounted."""
    root = Path(tmp) / "videos"
    for n in names:
        link = root / n
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(shared_video(n).resolve())
    return str(root)


@pytest.fixture(scope="session")
def ray_local():
    """One local Ray instance for the whole session (2 CPUs, like CI)."""
    import ray

    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    if not ray.is_initialized():
        ray.init(
            address="local", num_cpus=2, include_dashboard=False, ignore_reinit_error=True, logging_level="WARNING"
        )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def demo_corpus(tmp_path_factory):
    """The demo corpus (synthetic): static-camera clips with moving objects + one camera pan."""
    from vid2pair.pipeline.synthetic import make_demo_corpus

    d = tmp_path_factory.mktemp("corpus")
    paths = make_demo_corpus(d, n_static=3, n_moving_camera=1, seed=0)
    return d, paths
