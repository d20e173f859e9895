import pytest

from vid2pair.pipeline.cli import main
from vid2pair.pipeline.config import ConfigError, load_config


@pytest.mark.parametrize("preset", ["demo", "framepainter", "magicfixup"])
def test_presets_load(preset):
    cfg = load_config(preset)
    assert cfg.name == preset


def test_preset_values_follow_papers():
    fp = load_config("framepainter")
    assert fp.frame.size == [576, 1024] and fp.pairs.min_gap_s == 1.0 and fp.flow.backend == "sea_raft_m"
    assert fp.motion.min_moving_frac and fp.motion.max_p99  # both too-small and too-large rules on
    mf = load_config("magicfixup")
    assert (mf.frame.mode, mf.frame.short_side, mf.frame.size) == ("short_side_crop", 512, [512, 512])
    assert (mf.pairs.policy, mf.pairs.uniform_min_s, mf.pairs.uniform_max_s) == ("uniform_seconds", 1, 10)
    assert mf.flow.backend == "raft_large" and mf.flow.chain
    assert (mf.motion.large_px, mf.motion.max_large_frac) == (350.0, 0.1)


def test_overrides_apply_and_parse_yaml_values():
    cfg = load_config("demo", ["pairs.per_shot=7", "frame.size=[128, 160]", "flow.iters=null", "pairs.min_gap_s=2"])
    assert cfg.pairs.per_shot == 7 and cfg.frame.size == [128, 160] and cfg.pairs.min_gap_s == 2.0


@pytest.mark.parametrize(
    "override, key",
    [
        (["pairs.per_shott=3"], "pairs.per_shott"),  # unknown key
        (["nope.x=1"], "nope"),  # unknown section
        (["pairs.per_shot=many"], "pairs.per_shot"),  # wrong type
        (["pairs.per_shot=2.5"], "pairs.per_shot"),  # float for int
        (["flow.chain=3"], "flow.chain"),  # int for bool
        (["pairs.per_shot=0"], "pairs.per_shot"),  # range
        (["pairs.max_gap_s=0.5"], "pairs.max_gap_s"),  # max < min
        (["pairs.uniform_max_s=0"], "pairs.uniform_max_s"),
        (["flow.backend=farneback"], "flow.backend"),  # choice
        (["motion.max_large_frac=1.5"], "motion.max_large_frac"),
        (["frame.size=[10]"], "frame.size"),
        (["flow.inference_size=[520, 961]"], "flow.inference_size"),
        (["static_camera.min_inliers=1"], "static_camera.min_inliers"),
        (["probe.min_duration_s=0"], "probe.min_duration_s"),
        (["pairs.advance_step5_min_p95=-1"], "pairs.advance_step5_min_p95"),
        (["motion.moving_px=-0.5"], "motion.moving_px"),
        (["motion.large_px=0"], "motion.large_px"),
        (["runner.check_weights=maybe"], "runner.check_weights"),
    ],
)
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config("demo", override)
    assert str(e.value).startswith(key), str(e.value)


def test_cli_rejects_bad_config_before_any_work(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(
        [
            "build",
            "--config",
            "demo",
            "--input",
            str(tmp_path),
            "--output",
            str(out),
            "--set",
            "motion.min_p90=-1",
            "--runner",
            "local",
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "motion.min_p90" in err and "must be >= 0" in err
    assert not out.exists()  # nothing was started


def test_fingerprint_ignores_runner_only():
    a, b = load_config("demo"), load_config("demo", ["runner.name=local", "runner.num_cpus=3"])
    c = load_config("demo", ["seed=1"])
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()


def test_config_reference_is_in_sync():
    from pathlib import Path

    from vid2pair.pipeline.config import config_markdown

    doc = Path(__file__).resolve().parent.parent / "docs" / "config.md"
    assert doc.read_text().strip() == config_markdown().strip(), (
        "docs/config.md is stale: python -m vid2pair.pipeline.config > docs/config.md"
    )


def test_exactly_one_opencv_distribution_is_installed():
    """opencv-python and opencv-python-headless both own cv2/; the extras must not pull a second one."""
    from importlib import metadata

    names = sorted(
        {
            d.metadata["Name"].lower()
            for d in metadata.distributions()
            if (d.metadata["Name"] or "").lower().startswith("opencv")
        }
    )
    assert names == ["opencv-python"], names
