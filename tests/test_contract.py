"""The stage contract: every fact about a stage lives in its module; the rest is derived."""

from __future__ import annotations

import ast
import dataclasses
import io
import json
import tarfile
import typing
from pathlib import Path

import numpy as np
import pytest

from vid2pair.core.errors import ConfigError
from vid2pair.core.seeding import derive_seed, rng_for
from vid2pair.pipeline.config import Config, config_from_dict, load_config
from vid2pair.pipeline.graph import STAGES
from vid2pair.pipeline.plan import fused_prefix, model_stages, needs, pair_classes, signal_members, signals

ROOT = Path(__file__).resolve().parent.parent


def _imports(path: Path) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return out


@pytest.mark.parametrize("folder", ["stages", "core"])
def test_layering_stages_and_core_import_nothing_from_pipeline(folder):
    bad = {
        p.name: sorted(m for m in _imports(p) if m.startswith(("vid2pair.pipeline", "vid2pair.trainer")))
        for p in (ROOT / folder).glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}
    if folder == "core":  # the core imports only the core
        core_bad = {
            p.name: sorted(m for m in _imports(p) if m.startswith("vid2pair.") and not m.startswith("vid2pair.core"))
            for p in (ROOT / folder).glob("*.py")
        }
        assert not {k: v for k, v in core_bad.items() if v}


def test_ops_import_only_core_and_ops():
    """``ops/`` (what stages and pipeline share: drawing, flow arithmetic and backends, grey, similarity
    fits) sits under the stages: it imports no stage, no pipeline, no trainer."""
    bad = {
        p.name: sorted(
            m for m in _imports(p) if m.startswith("vid2pair.") and not m.startswith(("vid2pair.core", "vid2pair.ops"))
        )
        for p in (ROOT / "ops").glob("*.py")
    }
    assert not {k: v for k, v in bad.items() if v}


def test_no_import_cycles_in_core_ops_and_stages():
    """No two modules of core/, ops/ and stages/ import each other, directly or round a loop, counting
    the imports inside functions (which would hide a cycle from Python but not from a reader)."""
    import graphlib

    mods = {f"vid2pair.{d}.{p.stem}": p for d in ("core", "ops", "stages") for p in (ROOT / d).glob("*.py")}
    graph = {}
    for m, p in mods.items():
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names}
        graph[m] = (deps & set(mods)) - {m}
    graphlib.TopologicalSorter(graph).prepare()  # raises CycleError naming the loop


def _sections():
    hints = typing.get_type_hints(Config)
    return [(f.name, hints[f.name]) for f in dataclasses.fields(Config) if dataclasses.is_dataclass(hints[f.name])]


def _valid_base() -> dict:
    return {"frame": {"mode": "resize", "size": [64, 64]}}


def test_every_knob_is_declared_with_a_meaning():
    for name, cls in _sections():
        for f in dataclasses.fields(cls):
            assert f.metadata.get("doc"), f"{name}.{f.name} has no knob() declaration"


def test_one_generic_validator_checks_every_range_and_choice():
    """For every knob with a declared range, a value just outside it is an error naming the key;
    for every choice knob, an unknown choice is."""
    checked = 0
    for name, cls in _sections():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            md, key = f.metadata, f"{name}.{f.name}"
            bad = None
            if "ge" in md:
                bad = md["ge"] - 1
            elif "gt" in md:
                bad = md["gt"] if not isinstance(md["gt"], bool) else None
            elif "le" in md:
                bad = md["le"] + 1
            elif typing.get_origin(hints[f.name]) is typing.Literal:
                bad = "no-such-choice"
            if bad is None:
                continue
            tp = hints[f.name]
            if bad != "no-such-choice" and (tp is int or int in typing.get_args(tp)):
                bad = int(np.floor(bad))
            data = _valid_base()
            data.setdefault(name, {})[f.name] = bad
            with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
                config_from_dict(data)
            checked += 1
    assert checked > 100


def test_defaults_validate_and_presets_load():
    config_from_dict({})
    for p in sorted((ROOT / "configs").glob("*.yaml")):
        if not p.name.startswith("train_"):
            load_config(p.stem)


def test_the_config_tree_is_the_stages_sections():
    names = [n for n, _ in _sections()]
    for S in STAGES:
        for sec in S.sections:
            assert sec in names
    assert names[:2] == ["input", "probe"] and names[-3:] == ["isolation", "output", "runner"]


def test_ray_grouping_is_derived_from_the_resources():
    cfg = load_config("demo")
    classes = pair_classes(cfg)
    assert [S.name for S in classes] == ["flow", "motion", "track", "sketch", "coarse", "collage", "quality", "encode"]
    assert fused_prefix(cfg, classes) == classes and model_stages(cfg, classes) == []  # weight-free: one task
    # a weight-free backend never asks for a GPU, whatever its stage's share says
    cfg = load_config("demo", ["flow.num_gpus=1", "track.num_gpus=1", "collage.num_gpus=1"])
    assert model_stages(cfg, pair_classes(cfg)) == []
    cfg = load_config("demo", ["flow.backend=raft_small", "flow.num_gpus=0.5", "flow.actors=2", "sketch.enabled=false"])
    classes = pair_classes(cfg)
    assert "sketch" not in [S.name for S in classes]
    assert fused_prefix(cfg, classes) == ()
    ((S, r),) = model_stages(cfg, classes)
    assert S.name == "flow" and (r.num_gpus, r.actors, r.gpu_key) == (0.5, 2, "flow.num_gpus")
    cfg = load_config("demo", ["track.backend=cotracker3_offline", "collage.segmenter=sam"])
    classes = pair_classes(cfg)
    assert [S.name for S in fused_prefix(cfg, classes)] == ["flow", "motion"]
    assert [S.name for S, _ in model_stages(cfg, classes)] == ["track", "collage"]


def test_needs_are_declared_by_each_stage():
    cfg = load_config(
        "demo",
        [
            "flow.backend=sea_raft_m",
            "track.backend=cotracker3_online",
            "track.checkpoint=/x/ct.pth",
            "collage.segmenter=sam",
            "collage.sam_model_type=vit_h",
        ],
    )
    got = {(n.what, n.name, n.path) for n in needs(cfg)}
    assert got == {
        ("weights", "sea_raft_m", None),
        ("extra", "ptlflow", None),
        ("weights", "cotracker3_online", "/x/ct.pth"),
        ("weights", "sam_vit_h", None),
        ("extra", "segment_anything", None),
    }
    assert needs(
        load_config("demo", ["flow.backend=raft_large", "collage.segmenter=sam", "collage.enabled=false"])
    ) == [n for n in needs(load_config("demo", ["flow.backend=raft_large"])) if n.name == "raft_large"]


def test_signals_and_trainer_members_come_from_the_declarations():
    sig = signals()
    assert set(sig) == {"flow", "flow_bwd", "drag", "tracks", "sketch", "coarse", "collage", "region_drag"}
    assert signal_members("coarse") == ("coarse.png", "coarse_mask.png")
    from vid2pair.trainer.data import SampleSpec

    spec = SampleSpec(task="drag", resolution=(64, 64), match_grids=[(8, 8)])
    assert spec.required() == ["src.*", "tgt.*", "drag.json", "drag_mask.png", "tracks.npy", "visibility.npy"]
    from vid2pair.pipeline import qc

    assert qc.SIGNALS["sketch"] == (("sketch.png",), "sketch.enabled")


def test_a_new_stage_is_one_module_and_one_line(demo_corpus, tmp_path, monkeypatch):
    """tests/toy_stage.py adds a signal: with one more line in the stage list (before the quality
    stage), its members are encoded into the samples (through the isolation child), the quality stage
    runs its own rule (dropping it where the rule fails, with a signal-level reject), the QC gallery
    and ``inspect`` draw and list it, its index column appears, its signal is listed, its needs
    are checked before any work, and the trainer trains on it as a task."""
    from toy_stage import NeedyToyStage, ToyStage

    from vid2pair.pipeline import qc
    from vid2pair.pipeline.io import read_rejects
    from vid2pair.pipeline.models import check_build_weights
    from vid2pair.pipeline.runners import build

    stages = (*STAGES[:-2], ToyStage, *STAGES[-2:])
    cfg = load_config(
        "demo",
        [
            "runner.name=local",
            "runner.progress=false",
            "frame.size=[96, 128]",
            "track.enabled=false",
            "collage.enabled=false",
        ],
    )
    s = build(cfg, str(demo_corpus[0]), tmp_path / "out", log_summary=False, stages=stages)
    assert s["samples"] > 0
    import pandas as pd

    idx = pd.concat([pd.read_parquet(p) for p in sorted((tmp_path / "out" / "index").glob("*.parquet"))])
    assert idx["toy_mean"].notna().all()
    n, odd = 0, []
    for tar in sorted((tmp_path / "out" / "shards").glob("*.tar")):
        with tarfile.open(tar) as tf:
            names = tf.getnames()
            for m in names:
                if m.endswith(".meta.json"):
                    key = m[: -len(".meta.json")]
                    meta = json.loads(tf.extractfile(m).read())
                    if meta["src_frame"] % 2:  # judged and dropped: the pair is written without it
                        odd.append(key)
                        assert f"{key}.toy.png" not in names and "toy" not in meta["signals"]
                        continue
                    n += 1
                    assert "toy" in meta["signals"]
                    assert json.loads(tf.extractfile(f"{key}.toy.json").read()) == {"hello": key}
                    assert "toy.png" in meta["files"] and "toy_json" not in meta
                    from PIL import Image

                    toy = np.asarray(Image.open(io.BytesIO(tf.extractfile(f"{key}.toy.png").read())))
                    assert toy.shape == (96, 128, 3)
    assert n and odd and n + len(odd) == s["samples"]
    rej = read_rejects(tmp_path / "out")
    toy_rej = rej[(rej["level"] == "signal") & rej["detail"].str.contains("is odd")]
    assert sorted(toy_rej["key"]) == sorted(odd) and set(toy_rej["reason"]) == {"toy_odd_frame"}
    # drawn in the gallery, and listed by inspect
    ds = qc.QCDataset(tmp_path / "out")
    for key in (odd[0], next(k for k in idx["key"] if k not in odd)):
        panels = {p.name: p for p in qc.render_panels(ds.load(key), 128, ds, stages=stages)}
        assert list(panels) == [*qc.PANELS, "toy"]
        if key in odd:
            assert "quality/toy_odd_frame" in panels["toy"].missing
        else:
            assert panels["toy"].missing is None and panels["toy"].image.shape == (96, 128, 3)
        text, _ = qc.inspect_key(tmp_path / "out", key, tmp_path / f"{key}.png", stages=stages)
        assert ("toy (quality/toy_odd_frame" in text) == (key in odd)
        assert ("signals: " in text) and (("toy" in text.split("signals: ")[1].split("\n")[0]) != (key in odd))
    # measured: its score is an index column, its metric a meta-table column with caption words and a histogram
    assert idx["q_toy_src_frame"].notna().all() and set(idx["q_toy_src_frame"] % 2) == {0, 1}  # every pair scored
    ds = qc.QCDataset(tmp_path / "out", stages=stages)
    mt = ds.meta_table()
    assert mt["toy_mean_grey"].notna().sum() == n  # measured where the sample carries it (not where dropped)
    assert "toy_mean_grey" not in qc.QCDataset(tmp_path / "out").meta_table()  # not a signal of the stage graph
    assert "toy mean " in qc.sample_caption(ds.load(next(k for k in idx["key"] if k not in odd)), stages)
    titles = [ax.get_title() for ax in qc.fig_histograms(ds, mt).axes]
    assert any(t.startswith("toy mean grey") for t in titles), titles
    assert "toy source frame" in [ax.get_title() for ax in qc.fig_quality(ds).axes]
    assert signals(stages)["toy"].members == ("toy.png", "toy.json")
    problems = check_build_weights(cfg, stages=(*STAGES[:-1], NeedyToyStage, STAGES[-1]))
    assert problems == ["toy.backend=needy needs the vid2pair_no_such_module package: pip install 'vid2pair[toy]'"]
    # trainable: with the line in the stage list, ``task: toy`` is a trainer task
    from vid2pair.pipeline import graph
    from vid2pair.trainer.config import load_train_config, trainer_tasks
    from vid2pair.trainer.data import SampleSpec, decode_sample
    from vid2pair.trainer.train import train

    assert "toy" not in trainer_tasks()
    root = Path(__file__).resolve().parent.parent
    over = [
        f"data.train={tmp_path / 'out' / 'shards'}",
        f"train.output_dir={tmp_path / 'run'}",
        "task=toy",
        "model.resolution=[32, 48]",
        "model.tiny.base_channels=8",
        "model.tiny.channel_mults=[1, 2]",
        "data.batch_size=2",
        "data.num_workers=0",
        f"data.eval={tmp_path / 'out' / 'shards'}",  # the prediction grid: src | toy | prediction | tgt
        "train.max_steps=3",
        "train.eval_every=3",
        "train.eval_images=2",
        "train.num_threads=2",
    ]
    with pytest.raises(ConfigError, match="task: 'toy' is not one of"):
        load_train_config(root / "configs" / "train_tiny_cpu.yaml", over)
    monkeypatch.setattr(graph, "STAGES", stages)  # the one line
    assert "toy" in trainer_tasks()
    tcfg = load_train_config(root / "configs" / "train_tiny_cpu.yaml", over)
    summary = train(tcfg)
    print("toy training:", summary)
    assert summary["steps"] == 3 and (tmp_path / "run" / "samples" / "step-00000003.png").is_file()
    with tarfile.open(sorted((tmp_path / "out" / "shards").glob("*.tar"))[0]) as tf:
        names = tf.getnames()
        key = next(m[: -len(".toy.png")] for m in names if m.endswith(".toy.png"))
        raw = {m.split(".", 1)[1]: tf.extractfile(m).read() for m in names if m.startswith(key + ".")}
    got = decode_sample({**raw, "__key__": key}, SampleSpec(task="toy", resolution=(32, 48)))
    assert got["signal"].shape == (3, 32, 48)  # the inverted source, at the model resolution
    # (src.jpg is lossy: off by a few levels where the PNG is exact)
    assert (
        float((got["signal"] + got["src"]).abs().mean()) < 0.02 < 0.2 < float((got["signal"] - got["src"]).abs().mean())
    )


def test_a_read_without_a_provider_stops_the_build_before_any_work(demo_corpus, tmp_path):
    """Every array a stage reads is provided by a stage before it (a member's key or a ``provides``
    entry). A stage that reads an array nobody provides stops the build before any input is read,
    with an error naming the stage and the array; one placed before its provider names the provider."""
    from toy_stage import ToyStage

    from vid2pair.pipeline.plan import PlanError, check_arrays
    from vid2pair.pipeline.runners import build

    check_arrays(STAGES)  # the real graph fits together

    class OrphanStage(ToyStage):
        name = "orphan"
        reads = ("src", "no_such_array")

    cfg = load_config("demo", ["runner.name=local", "runner.progress=false", "frame.size=[96, 128]"])
    with pytest.raises(
        PlanError,
        match=r"OrphanStage \(stage 'orphan'\) reads 'no_such_array', which no stage "
        r"provides",
    ):
        build(
            cfg,
            str(demo_corpus[0]),
            tmp_path / "out",
            log_summary=False,
            stages=(*STAGES[:-1], OrphanStage, STAGES[-1]),
        )
    assert not (tmp_path / "out" / "shards").exists()

    class EarlyStage(ToyStage):
        name = "early"
        reads = ("flow",)

    with pytest.raises(
        PlanError,
        match=r"EarlyStage \(stage 'early'\) reads 'flow', which FlowStage provides only "
        r"after it",
    ):
        check_arrays((STAGES[0], EarlyStage, *STAGES[1:]))


def _flow_outputs(over: list[str]) -> tuple[frozenset, set]:
    """What the plan tells the flow stage the stages after it read, and the arrays a pair leaves it with."""
    from vid2pair.core.items import PairItem
    from vid2pair.pipeline.plan import build_pair_stages

    cfg = load_config("demo", ["frame.size=[96, 128]", *over])
    flow = build_pair_stages(cfg, pair_classes(cfg))[0]
    assert flow.name == "flow"
    frames = np.full((3, 96, 128, 3), 90, np.uint8)
    for k in range(3):  # a textured square moving 6 px a frame over a plain background
        frames[k, 30:60, 20 + 6 * k : 50 + 6 * k] = np.random.default_rng(0).integers(0, 255, (30, 30, 3))
    it = PairItem(
        key="k", clip_id="c", source="s", chunk=0, clip_idx=0, meta={"policy": "min_gap"}, arrays={"frames": frames}
    )
    (out,) = flow([it])
    return flow.wanted, set(out.arrays)


def test_a_stage_emits_an_optional_array_only_when_a_later_stage_reads_it():
    """The plan tells each stage what the enabled stages after it read; the flow stage keeps the frames
    for the tracker only when the tracker runs, without reading the tracker's config."""
    wanted, arrays = _flow_outputs([])
    assert {"frames", "rematched", "rematched_src", "flow_valid"} <= wanted
    assert {"src", "tgt", "flow", "frames"} <= arrays
    wanted, arrays = _flow_outputs(["track.enabled=false", "collage.enabled=false"])
    assert not {"frames", "rematched", "rematched_src"} & wanted and "flow_valid" in wanted
    assert {"src", "tgt", "flow"} <= arrays and "frames" not in arrays


def test_no_stage_reads_another_stages_config():
    """A stage module reads only its own config sections and the pipeline's (``output``, ``frame``,
    ``runner``...): what another stage needs reaches it through the plan (``wanted``,
    ``frames_read``) or the pair itself."""
    import re
    import sys

    owner = {sec: S for S in STAGES for sec in S.sections}
    found = []
    for S in STAGES:
        text = Path(sys.modules[S.__module__].__file__).read_text()
        for sec in sorted(set(re.findall(r"\bcfg\.(\w+)\.", text))):
            if sec in owner and owner[sec] is not S:
                found.append(f"{S.__module__} reads {sec} ({owner[sec].__name__}'s)")
    assert not found, found


def test_frame_size_units_are_applied_by_one_function():
    """``px@512`` / ``px@240`` knobs are scaled by :func:`vid2pair.core.spec.scaled` (the knob's own
    unit) or :func:`frame_scale`; no stage or op divides a frame side by a reference side by hand."""
    import re
    import sys

    from vid2pair.core.spec import frame_scale, scaled
    from vid2pair.stages.quality import QualityConfig

    assert scaled(QualityConfig(), "blur_sigma", (256, 1000)) == 0.75  # 1.5 px@512 on a 256-px short side
    assert scaled(QualityConfig(max_camera_shift_px=2.0), "max_camera_shift_px", (720, 1280, 3)) == 2.8125
    assert frame_scale((480, 640), "px@240") == 2.0 and frame_scale((480, 640), "px") == 1.0
    assert frame_scale((300, 400), "px@512", reference=600) == 0.5
    with pytest.raises(ValueError, match="not a frame-size unit"):
        frame_scale((480, 640), "frac")
    hand = re.compile(r"(min\([^)]*\)|short_side)\s*/\s*(512|240)\b")
    root = Path(sys.modules["vid2pair.stages.quality"].__file__).parent.parent
    found = [
        f"{f.relative_to(root)}:{i}"
        for d in ("stages", "ops")
        for f in sorted((root / d).glob("*.py"))
        for i, line in enumerate(f.read_text().splitlines(), 1)
        if hand.search(line)
    ]
    assert not found, found


def test_the_clip_stage_decodes_the_frames_the_enabled_stages_read():
    from vid2pair.pipeline.plan import frames_to_decode

    assert frames_to_decode(load_config("demo", ["track.max_frames=24"])) == 24
    assert (
        frames_to_decode(load_config("demo", ["track.enabled=false", "flow.chain=true", "flow.chain_max_steps=5"])) == 6
    )
    assert frames_to_decode(load_config("demo", ["track.enabled=false", "flow.chain=false"])) == 2


def test_one_default_per_knob():
    from vid2pair.stages.track import FlowChainTracker, TrackConfig, make_tracker

    d = TrackConfig()
    tr = FlowChainTracker()
    assert (tr.step_px, tr.fb_thresh_px, tr.min_ncc, tr.analysis_width) == (
        d.step_px,
        d.fb_thresh_px,
        d.min_ncc,
        d.analysis_width,
    )
    assert make_tracker(TrackConfig(step_px=7.0)).step_px == 7.0
    with pytest.raises(ConfigError, match="track.step_px"):
        FlowChainTracker(TrackConfig(step_px=0.0))


def test_one_seeding_scheme():
    assert derive_seed(0, "clip", "shot", 1) == derive_seed(0, "clip", "shot", 1)
    assert derive_seed(0, "clip", "shot", 1) != derive_seed(0, "clip", "shot", 2) != derive_seed(1, "clip", "shot", 1)
    a, b = rng_for(3, "k", "drag").random(4), rng_for(3, "k", "drag").random(4)
    assert np.array_equal(a, b) and not np.array_equal(a, rng_for(3, "k", "collage").random(4))
