"""Peak memory of a build against clip length: is it bounded by one pair, not by the clip?

    python benchmarks/memory.py [--shots 1 5 20] [--preset framepainter_cpu] [--size 1280x720]
                                [--shot-s 3] [--fps 12] [--set KEY=VALUE ...]

For each shot count, writes one synthetic clip (1280x720, a cut every 3 s, one object moving in
each shot; shot by shot, so the writer itself stays small), then builds it with
``vid2pair build --runner local`` in a child process at the preset's settings (FramePainter's
576x1024 frames with the weight-free backends by default) and samples the RSS of the whole process
tree (the build and its isolation child) every 50 ms. Prints per clip: shots, candidate pairs,
samples written, build seconds and the peak tree RSS; then the ratio of the longest clip's peak to
the shortest's (1.0: flat). Peak RSS is measured, not timed: the seconds are for orientation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def build_peak(clip: Path, out: Path, preset: str, sets: list[str]) -> tuple[float, int, dict]:
    cmd = [
        sys.executable,
        "-m",
        "vid2pair.pipeline.cli",
        "build",
        "--config",
        preset,
        "--input",
        str(clip),
        "--output",
        str(out),
        "--runner",
        "local",
        "--no-progress",
    ]
    for kv in sets:
        cmd += ["--set", kv]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    _, err = proc.communicate()
    th.join()
    secs = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"build failed ({proc.returncode}):\n{err[-3000:]}")
    return secs, peak[0], json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shots", type=int, nargs="+", default=[1, 5, 20])
    ap.add_argument("--preset", default="framepainter_cpu")
    ap.add_argument("--size", default="1280x720")
    ap.add_argument("--shot-s", type=float, default=3.0)
    ap.add_argument("--fps", type=float, default=12.0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    a = ap.parse_args()
    from vid2pair.pipeline.synthetic import write_shots_video

    w, h = (int(x) for x in a.size.lower().split("x"))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in a.shots:
            clip = Path(tmp) / f"shots{n:03d}.mp4"
            write_shots_video(clip, n, w, h, a.shot_s, a.fps)
            secs, peak, s = build_peak(clip, Path(tmp) / f"out{n:03d}", a.preset, a.set)
            pairs = s.get("samples", 0) + sum(v for k, v in s.get("rejects_by_level", {}).items() if k == "pair")
            rows.append(
                {
                    "shots": n,
                    "seconds_of_video": round(n * a.shot_s, 1),
                    "candidate_pairs": pairs,
                    "samples": s.get("samples", 0),
                    "build_s": round(secs, 1),
                    "peak_tree_rss_mib": round(peak / 2**20, 1),
                }
            )
            if not a.json:
                r = rows[-1]
                print(
                    f"{r['shots']:4d} shots ({r['seconds_of_video']:5.1f} s): {r['candidate_pairs']:4d} candidate "
                    f"pairs, {r['samples']:4d} written, build {r['build_s']:7.1f} s, peak RSS (process tree) "
                    f"{r['peak_tree_rss_mib']:8.1f} MiB",
                    flush=True,
                )
    ratio = rows[-1]["peak_tree_rss_mib"] / max(rows[0]["peak_tree_rss_mib"], 1e-9)
    if a.json:
        print(
            json.dumps(
                {"preset": a.preset, "size": [w, h], "rows": rows, "peak_ratio_longest_vs_shortest": round(ratio, 3)}
            )
        )
    else:
        print(
            f"peak RSS, {rows[-1]['shots']} shots vs {rows[0]['shots']}: {ratio:.2f}x  (preset {a.preset}, "
            f"{w}x{h} input)"
        )


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
