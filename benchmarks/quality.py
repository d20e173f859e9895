"""Yield on real footage, per clip and per signal, and what it costs.

    python benchmarks/quality.py [--videos DIR ...] [--presets demo,framepainter_cpu] [--per-shot N]
                                 [--set KEY=VALUE ...] [--json OUT.json]

Builds each preset with the local runner on the real fixed-camera clips (by default the ones of
``../shared/videos`` whose camera is fixed and whose subject moves: ``real2/`` and the fixed clips
of ``real/`` and the top folder, as listed in ``FIXED`` below), and prints:

* per clip: the candidate pairs the stages judged, the samples written, and for each signal the
  number of written samples that carry it;
* per signal: the share of the clips that yield at least one sample carrying it;
* per rule of the quality stage: how many of the judged pairs it let pass (pair rules) and how many
  of the pairs that reached it kept the signal (signal rules);
* written samples per CPU-minute of the build (the build process and its children).

"Good" is what the quality stage kept: every written signal passed its rule. Look at the samples
(``vid2pair report``, ``vid2pair inspect --key``) before trusting a number.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "videos"
#: the fixed-camera clips with a moving subject (``videos/SOURCES.md``); the shaking, moving-camera
#: and screen clips are left out, and so are the three lab clips shorter than the presets' 1-s gap
FIXED = [
    "vtest.avi",
    "tree.avi",
    "real/coin_pen.avi",
    "real/motion.mov",
    "real/balle1-vp9.avi",
    *[
        f"real2/{n}"
        for n in (
            "asl_sign_again_man.mkv",
            "asl_sign_book_woman.mkv",
            "dog_tricks_treat.avi",
            "flies_arena_dark.mp4",
            "hand_moving_bottles.mp4",
            "makeup_hand_face.avi",
            "mouse_openfield_topdown.mp4",
            "mouse_round_arena.mp4",
            "people_walk_past_table.mp4",
            "silent_film_street.mp4",
            "street_pedestrians_high.mp4",
            "street_traffic_cars.mp4",
            "two_people_hug_room.mp4",
            "woman_drinking_room.avi",
        )
    ],
]
SIGNALS = ("drag", "sketch", "coarse", "collage", "region_drag", "flow", "tracks")
PAIR_RULES = ("global_change", "camera_moved", "no_visible_change", "no_visible_motion", "unmatched_change")


def _cpu_s() -> float:
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def measure(preset: str, inputs: Path, out: Path, extra: list[str]) -> dict:
    import subprocess
    import sys

    from vid2pair.pipeline.io import read_index, read_rejects

    cmd = [
        sys.executable,
        "-m",
        "vid2pair.pipeline.cli",
        "build",
        "--config",
        preset,
        "--input",
        str(inputs),
        "--output",
        str(out),
        "--runner",
        "local",
        "--no-progress",
    ]
    for kv in extra:
        cmd += ["--set", kv]
    c0, t0 = _cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    cpu, wall = _cpu_s() - c0, time.perf_counter() - t0
    idx, rej = read_index(out), read_rejects(out)
    clips = {}
    for src in sorted(set(idx["source"]) | set(rej["source"])):
        mine = idx[idx["source"] == src]
        carried = Counter(s for x in mine["signals"] for s in str(x).split(",") if s)
        judged = len(mine) + int(((rej["source"] == src) & (rej["level"] == "pair")).sum())
        clips[Path(src).name] = {
            "judged": judged,
            "written": int(len(mine)),
            **{s: int(carried.get(s, 0)) for s in SIGNALS},
        }
    q = rej[(rej["stage"] == "quality")]
    reached = len(idx) + int((q["level"] == "pair").sum())  # pairs the quality stage judged
    rules = {}
    for r in PAIR_RULES:
        n = int(((q["level"] == "pair") & (q["reason"] == r)).sum())
        rules[r] = {"failed": n, "pass_share": round(1 - n / reached, 3) if reached else None}
    sig = q[q["level"] == "signal"]
    for r, n in Counter(sig["reason"]).most_common():
        rules[r] = {"failed": int(n), "pass_share": round(1 - n / reached, 3) if reached else None}
    share = {s: round(sum(1 for c in clips.values() if c[s]) / max(1, len(clips)), 3) for s in SIGNALS}
    return {
        "clips": clips,
        "signal_clip_share": share,
        "rules": rules,
        "samples": int(len(idx)),
        "judged": reached,
        "cpu_s": round(cpu, 1),
        "wall_s": round(wall, 1),
        "samples_per_cpu_minute": round(60 * len(idx) / cpu, 2) if cpu else None,
    }


def _inputs(videos: list[Path], where: Path) -> Path:
    """The clips as a folder ``videos/`` of links (``videos/real2/x.mp4``), so that their clip ids,
    and so the pairs drawn, are the same on every checkout wherever ``../shared`` is mounted; a clip
    outside ``../shared`` is linked by its file name."""
    root = where / "videos"
    for v in videos:
        try:
            rel = v.resolve().relative_to(SHARED.resolve())
        except ValueError:
            rel = Path(v.name)
        link = root / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(v.resolve())
    return root


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", nargs="*", default=None, help="clips (default: the fixed clips of ../shared/videos)")
    ap.add_argument("--presets", default="demo,framepainter_cpu")
    ap.add_argument("--per-shot", type=int, default=None)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    ap.add_argument("--keep", help="build into this folder (one sub-folder per preset) and keep the outputs")
    a = ap.parse_args()
    videos = [Path(v) for v in a.videos] if a.videos else [SHARED / n for n in FIXED if (SHARED / n).exists()]
    if not videos:
        print("no real clips found: nothing to measure")
        return 0
    report = {}
    with tempfile.TemporaryDirectory() as d:
        lst = _inputs(videos, Path(a.keep or d))
        for preset in a.presets.split(","):
            extra = ([f"pairs.per_shot={a.per_shot}"] if a.per_shot else []) + list(a.set)
            res = measure(preset, lst, Path(a.keep or d) / f"out-{preset}", extra)
            report[preset] = res
            with_samples = sum(1 for c in res["clips"].values() if c["written"])
            print(
                f"\n=== {preset}: {res['samples']} samples from {with_samples} of {len(res['clips'])} clips; "
                f"{res['judged']} pairs judged; {res['samples_per_cpu_minute']} samples per CPU-minute "
                f"({res['cpu_s']} CPU-s, {res['wall_s']} s wall)"
            )
            print(f"{'clip':30s} {'judged':>6s} {'written':>7s} " + " ".join(f"{s:>7s}" for s in SIGNALS))
            for name, c in res["clips"].items():
                print(f"{name[:30]:30s} {c['judged']:6d} {c['written']:7d} " + " ".join(f"{c[s]:7d}" for s in SIGNALS))
            print(
                "share of the clips with the signal: "
                + ", ".join(f"{s} {v:.0%}" for s, v in res["signal_clip_share"].items())
            )
            print(
                "rules (failed / pass share of the pairs the quality stage judged): "
                + ", ".join(f"{r} {v['failed']} ({v['pass_share']})" for r, v in res["rules"].items())
            )
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
