"""Keys and tar member names are sanitised whatever the input file names; no pickle from data files."""

import re
import tarfile
from pathlib import Path

from vid2pair.core.items import clip_id_for, pair_key, sanitize
from vid2pair.pipeline.config import load_config
from vid2pair.pipeline.runners import build
from vid2pair.pipeline.synthetic import make_clip, write_video

NASTY = [
    "../../etc/passwd.mp4",
    "/abs/olute/a.b.c.mp4",
    "we!rd $(rm -rf) ;name.mp4",
    "ünïcødé 視頻.mp4",
    "..",
    "....mp4",
    "a/../../b.mp4",
    "C:\\win\\path.mp4",
    "",
    "-rf.mp4",
    "x" * 500 + ".mp4",
]


def test_keys_are_safe_for_any_name():
    for name in NASTY:
        cid = clip_id_for(name)
        key = pair_key(cid, 3, 10, 40)
        assert re.fullmatch(r"[A-Za-z0-9_-]+", key), key
        assert ".." not in key and "/" not in key and len(cid) <= 51
    assert sanitize("") == "clip" and sanitize("...") == "clip"


def test_tar_members_have_plain_names(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    odd = d / "my clip..v2 (final) ü;$x.mp4"
    write_video(make_clip(width=160, height=120, n_frames=36, fps=12, seed=4).frames, odd, 12)
    out = tmp_path / "out"
    cfg = load_config(
        "demo",
        [
            "runner.name=local",
            "runner.progress=false",
            "frame.size=[120, 160]",
            "collage.enabled=false",
            "quality.enabled=false",
        ],
    )  # mechanics: names
    s = build(cfg, str(d), out, log_summary=False)
    assert s["samples"] == 3
    for tar in Path(out, "shards").glob("*.tar"):
        for m in tarfile.open(tar).getmembers():
            assert m.isfile() and "/" not in m.name and not m.name.startswith(("..", "/"))
            key, ext = m.name.split(".", 1)
            assert re.fullmatch(r"[A-Za-z0-9_-]+", key)


def _calls(text: str, name: str):
    """The argument text of every call ``name(...)``, balanced parentheses."""
    for m in re.finditer(re.escape(name) + r"\(", text):
        depth, i = 1, m.end()
        while depth and i < len(text):
            depth += {"(": 1, ")": -1}.get(text[i], 0)
            i += 1
        yield text[m.end() : i - 1]


def test_no_pickle_loading_in_the_code():
    root = Path(__file__).resolve().parent.parent
    for py in (
        list((root / "pipeline").rglob("*.py"))
        + list((root / "stages").rglob("*.py"))
        + list((root / "trainer").rglob("*.py"))
    ):
        text = py.read_text()
        assert "pickle.load" not in text, py
        for args in _calls(text, "np.load"):
            assert "allow_pickle=False" in args, f"{py}: np.load({args}) without allow_pickle=False"
        for args in _calls(text, "torch.load"):
            assert "weights_only=True" in args, f"{py}: torch.load({args}) without weights_only=True"
