"""The bad-input corpus: every file ends up written or rejected with a specific reason; the job goes on."""

import os
import shutil
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import SHARED
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.io import read_index, read_rejects
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.synthetic import make_clip, write_video


def _vfr(path):
    import av

    clip = make_clip(width=160, height=120, n_frames=40, fps=12, seed=3)
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = 160, 120, "yuv420p"
        s.time_base = Fraction(1, 1000)
        t = 0
        for k, f in enumerate(clip.frames):
            fr = av.VideoFrame.from_ndarray(f, format="rgb24")
            fr.pts, fr.time_base = t, Fraction(1, 1000)
            t += 40 if k % 2 else 120  # alternating 40 ms / 120 ms frame durations
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("bad")
    good = make_clip(width=320, height=240, n_frames=48, fps=12, seed=7)
    real = write_video(good.frames, d / "good clip ü $(echo x);.mp4", 12)  # spaces, unicode, shell chars
    data = real.read_bytes()
    (d / "zero.mp4").write_bytes(b"")
    (d / "text.mp4").write_text("not a video\n" * 100)
    (d / "truncated.mp4").write_bytes(data[: int(len(data) * 0.3)])
    mid = bytearray(data)
    rng = np.random.default_rng(0)
    lo, hi = len(mid) // 3, len(mid) // 3 + 4000
    mid[lo:hi] = rng.integers(0, 256, hi - lo, dtype=np.uint8).tobytes()
    (d / "corrupt_middle.mp4").write_bytes(bytes(mid))
    (d / "random.mp4").write_bytes(rng.bytes(200_000))
    import av

    with av.open(str(d / "audio_only.mp4"), "w") as c:
        s = c.add_stream("aac", rate=16000)
        fr = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        fr.sample_rate = 16000
        for k in range(30):
            fr.pts = k * 1024
            for p in s.encode(fr):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    write_video(good.frames[:1], d / "one_frame.mp4", 12)
    write_video(make_clip(width=48, height=48, n_frames=36, fps=12, seed=1).frames, d / "tiny48.mp4", 12)
    big = make_clip(width=3840, height=2160, n_frames=16, fps=8, seed=2, n_objects=2)
    write_video(big.frames, d / "uhd_4k.mp4", 8, crf=30)
    _vfr(d / "vfr.mp4")
    if (SHARED / "tree.avi").exists():  # header claims 444 frames, holds 68
        shutil.copy(SHARED / "tree.avi", d / "lying_header.avi")
    else:  # without the shared videos: an AVI cut short, whose header still claims every frame
        avi = write_video(good.frames, d / "full.avi", 12, codec="mpeg4")
        raw = avi.read_bytes()
        (d / "lying_header.avi").write_bytes(raw[: int(len(raw) * 0.6)])
        avi.unlink()
    unreadable = d / "unreadable.mp4"
    shutil.copy(real, unreadable)
    os.chmod(unreadable, 0)
    lst = d / "list.txt"
    names = sorted(p.name for p in d.iterdir() if p.suffix in (".mp4", ".avi"))
    lst.write_text("\n".join([str(d / n) for n in names] + [str(d / "does_not_exist.mp4"), str(real)]) + "\n")
    return d, lst


def test_every_bad_input_is_accounted_for(corpus, tmp_path):
    d, lst = corpus
    # quality off: these tests are about what decodes (the quality of tiny synthetic pairs is tested elsewhere)
    cfg = load_config(
        "demo", ["runner.name=local", "runner.progress=false", "isolation.clip_timeout_s=120", "quality.enabled=false"]
    )
    s = build(cfg, str(lst), tmp_path, log_summary=False)
    idx, rej = read_index(tmp_path), read_rejects(tmp_path)
    by_name = {}
    for _, r in rej.iterrows():
        by_name.setdefault(Path(r.source).name, set()).add(r.reason)
    written = {Path(x).name for x in idx["source"]}
    assert s["inputs"] == 15 and s["all_inputs_accounted"]
    sources = [Path(line) for line in lst.read_text().splitlines()]
    for p in {x.name for x in sources}:
        assert p in written or p in by_name, f"{p} neither written nor rejected"
    # specific reasons
    assert by_name["zero.mp4"] == {"unreadable"}
    assert by_name["text.mp4"] == {"unreadable"}
    assert by_name["random.mp4"] == {"unreadable"}
    assert by_name["audio_only.mp4"] == {"no_video_stream"}
    assert by_name["does_not_exist.mp4"] == {"not_found"}
    assert by_name["one_frame.mp4"] <= {"too_short", "too_few_frames"}
    assert by_name["tiny48.mp4"] == {"too_small"}
    assert "duplicate_input" in by_name["good clip ü $(echo x);.mp4"]
    assert "good clip ü $(echo x);.mp4" in written  # odd characters in the path work
    # measured: the 4K and the variable-frame-rate clips are written (4K decoded at reduced size; for
    # VFR, times are frame index / the stream's average rate, and the gaps obey the policy in those terms)
    k4 = idx[idx["source"].str.endswith("uhd_4k.mp4")]
    assert len(k4) > 0 and (k4["orig_width"] == 3840).all() and (k4["orig_height"] == 2160).all()
    vfr = idx[idx["source"].str.endswith("vfr.mp4")]
    assert len(vfr) > 0 and ((vfr["dt"] >= 1.0) & (vfr["dt"] <= 2.5)).all(), vfr[["src_time", "tgt_time", "dt"]]
    # truncated / corrupt files: either salvaged (written) or rejected with a decoder reason
    for n in ("truncated.mp4", "corrupt_middle.mp4"):
        assert n in written or by_name[n] & {
            "unreadable",
            "too_short",
            "too_few_frames",
            "decoder_error",
            "shot_too_short",
            "no_valid_pair",
        }, by_name.get(n)
    if os.geteuid() != 0:  # root can read a mode-000 file: see test_unreadable_file_through_the_cli
        assert by_name["unreadable.mp4"] == {"unreadable"}
    # the lying header: only really decoded frames are used
    meta_rows = idx[idx["source"].str.endswith("lying_header.avi")]
    n_real = 68 if (SHARED / "tree.avi").exists() else 48
    assert len(meta_rows) > 0 and (meta_rows["tgt_frame"] < n_real).all()
    assert (idx["width"] == 320).all()  # 4K decoded at reduced size then cropped


def test_decoder_crash_and_hang_lose_only_that_clip(corpus, tmp_path):
    """A crash or a hang in the isolation child loses only that clip, and the reject names the step
    that was running: a decoder abort, a stage abort after decoding, a decoder hang. The faults come
    from stages of the test's own (tests/fault_stages.py), passed to build()."""
    from fault_stages import AbortOnC1, FlowAbortOnC2, HangOnC0, with_stage

    from vid2pair.stages.clip import ClipStage
    from vid2pair.stages.flow import FlowStage

    clips = tmp_path / "clips"
    clips.mkdir()
    for k in range(3):  # mpeg4: a bit-exact encoder, so every clip's pairs are the same on every run
        write_video(
            make_clip(width=160, height=120, n_frames=36, fps=12, seed=10 + k).frames,
            clips / f"c{k}.mp4",
            12,
            codec="mpeg4",
        )
    cfg = load_config(
        "demo",
        [
            "runner.name=local",
            "runner.progress=false",
            "isolation.clip_timeout_s=8",
            "quality.enabled=false",
            "frame.size=[120, 160]",
        ],
    )
    s = build(cfg, str(clips), tmp_path / "o0", log_summary=False)
    assert s["clips_with_samples"] == 3 and s["rejects_total"] == 0  # no fault: every clip gives samples
    s = build(cfg, str(clips), tmp_path / "o1", log_summary=False, stages=with_stage(ClipStage, AbortOnC1))
    rej = read_rejects(tmp_path / "o1")
    crashed = rej[rej.reason == "decoder_crashed"]
    assert list(crashed.source.map(lambda x: Path(x).name)) == ["c1.mp4"]
    assert crashed.stage.iloc[0] == "decode" and "SIGABRT" in crashed.detail.iloc[0]
    assert s["clips_with_samples"] == 2
    # a crash after decoding, in the CPU pair stages (flow, tracking, signals, encode run in the same
    # isolation child): also loses only that clip, and is recorded against that stage
    s = build(cfg, str(clips), tmp_path / "o3", log_summary=False, stages=with_stage(FlowStage, FlowAbortOnC2))
    rej = read_rejects(tmp_path / "o3")
    crashed = rej[rej.reason == "stage_crashed"]
    assert list(crashed.source.map(lambda x: Path(x).name)) == ["c2.mp4"]
    assert crashed.stage.iloc[0] == "flow" and "SIGABRT" in crashed.detail.iloc[0]
    assert "then flow, motion" in crashed.detail.iloc[0]
    assert not (rej.reason == "decoder_crashed").any()
    assert s["clips_with_samples"] == 2 and s["all_inputs_accounted"]
    s = build(cfg, str(clips), tmp_path / "o2", log_summary=False, stages=with_stage(ClipStage, HangOnC0))
    rej = read_rejects(tmp_path / "o2")
    hung = rej[rej.reason == "decode_timeout"]
    assert list(hung.source.map(lambda x: Path(x).name)) == ["c0.mp4"] and hung.stage.iloc[0] == "shots"
    assert s["clips_with_samples"] == 2


def test_unreadable_file_through_the_cli(corpus, tmp_path):
    """A file the job cannot read is a recorded reject and `vid2pair build` still exits 0. Tests run
    as root here, and root reads mode-000 files, so the build runs without the capabilities that
    let root bypass file permissions (setpriv drops CAP_DAC_OVERRIDE / CAP_DAC_READ_SEARCH)."""
    import json
    import subprocess
    import sys

    d, _ = corpus
    good = next(p for p in d.iterdir() if p.name.startswith("good clip"))
    lst = tmp_path / "two.txt"
    lst.write_text(f"{d / 'unreadable.mp4'}\n{good}\n")
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "vid2pair.pipeline.cli",
        "build",
        "--config",
        "demo",
        "--input",
        str(lst),
        "--output",
        str(out),
        "--runner",
        "local",
        "--no-progress",
        "--set",
        "frame.size=[120, 160]",
        "--set",
        "quality.enabled=false",
    ]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv (util-linux): cannot make a file unreadable")
        cmd = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    s = json.loads((out / "summary.json").read_text())
    assert s["inputs"] == 2 and s["clips_with_samples"] == 1 and s["all_inputs_accounted"]
    rej = read_rejects(out)
    row = rej[rej["source"].str.endswith("unreadable.mp4")]
    assert list(row["reason"]) == ["unreadable"] and list(row["detail"]) == ["permission denied"]
    assert "rejects 1 (clip: 1)" in r.stderr  # the summary printed at the end says where it went


def test_theora_in_ogg_decodes_and_junk_names_ffmpegs_complaint(tmp_path):
    """A theora .ogv (no frame rate or count in its header; decord could not open it) is picked up by
    default and read exactly, in any order; a file FFmpeg cannot open is a DecodeError saying so."""
    from tests.conftest import shared_video
    from vid2pair.pipeline.config import InputConfig
    from vid2pair.stages.decode import DecodeError, Video, decode_all

    assert ".ogv" in InputConfig().extensions
    ogv = str(shared_video("real/Effet_force_magnetique.ogv"))
    with Video(ogv) as v:
        n = sum(1 for _ in v.scan(0, None, (64, 48)))
        assert n == v.n_frames >= 30  # 34 frames (1.36 s at 25 fps)
        fr = v.read([n - 1, 0, 17], (160, 120))
    ref = decode_all(ogv, (160, 120))
    assert fr.shape == (3, 120, 160, 3) and fr[2].std() > 10  # real picture content, not a blank frame
    assert np.array_equal(fr, ref[[n - 1, 0, 17]])
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(4096))
    with pytest.raises(DecodeError, match="pyav"):
        Video(str(junk))
