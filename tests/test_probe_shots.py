import numpy as np
import pytest

from tests.conftest import shared_video
from vid2pair.pipeline.synthetic import make_clip, write_video
from vid2pair.stages.decode import Video, scaled_size
from vid2pair.stages.probe import check_limits, probe
from vid2pair.stages.shots import detect_cuts, shots_from_cuts


def test_probe_reads_metadata():
    info, bad = probe(str(shared_video("bikes.mp4")))
    assert bad is None
    assert (info.width, info.height, info.codec) == (640, 272, "h264")
    assert info.fps == pytest.approx(25.0) and info.duration_s == pytest.approx(10.0, abs=0.1)


def test_probe_rejections(tmp_path):
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "text.mp4").write_text("this is not a video\n" * 50)
    (tmp_path / "random.mp4").write_bytes(np.random.default_rng(0).bytes(50_000))
    assert probe(str(tmp_path / "missing.mp4"))[1][0] == "not_found"
    assert probe(str(tmp_path / "empty.mp4"))[1][0] == "unreadable"
    assert probe(str(tmp_path / "text.mp4"))[1][0] == "unreadable"
    assert probe(str(tmp_path / "random.mp4"))[1][0] == "unreadable"


def test_probe_audio_only(tmp_path):
    import av

    p = tmp_path / "audio.m4a"
    with av.open(str(p), "w") as c:
        s = c.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 16000
        for k in range(20):
            frame.pts = k * 1024
            for pkt in s.encode(frame):
                c.mux(pkt)
        for pkt in s.encode(None):
            c.mux(pkt)
    info, bad = probe(str(p))
    assert bad[0] == "no_video_stream" and "audio" in bad[1]


def test_probe_limits(tmp_path):
    clip = make_clip(width=48, height=48, n_frames=12, fps=12, seed=0)
    p = write_video(clip.frames, tmp_path / "tiny.mp4", clip.fps)
    info, bad = probe(str(p))
    assert bad is None
    assert check_limits(info, 64, 64, 1.0)[0] == "too_small"
    assert check_limits(info, 16, 16, 2.0)[0] == "too_short"
    assert check_limits(info, 16, 16, 0.5) is None


def _cuts(path, fps):
    with Video(str(path)) as v:
        cuts = detect_cuts(v.scan(0, None, scaled_size(v.width, v.height, 128)), fps, min_scene_len=int(fps / 2))
        return cuts, v.n_frames


def test_shots_on_real_cuts():
    cuts, n = _cuts(shared_video("bikes.mp4"), 25.0)
    assert cuts == [30, 76, 137, 187, 242]
    kept, rejected = shots_from_cuts(cuts, n, 25.0, min_shot_s=1.0, trim_s=0.1)
    assert len(kept) == 5 and len(rejected) == 1  # the last 8 frames are too short
    assert kept[0] == (2, 28)


def test_shots_on_synthetic_cut(tmp_path):
    a = make_clip(width=160, height=120, n_frames=30, fps=12, seed=1).frames
    b = make_clip(width=160, height=120, n_frames=30, fps=12, seed=2).frames
    p = write_video(np.concatenate([a, b]), tmp_path / "cut.mp4", 12)
    cuts, n = _cuts(p, 12.0)
    assert cuts == [30] and n == 60
    assert _cuts(write_video(a, tmp_path / "one.mp4", 12), 12.0)[0] == []
