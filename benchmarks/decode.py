"""Decode throughput and exactness on the clip stage's own reads: the exact reader (``decode.Video``)
against decord's random access, which vid2pair used before.

For each clip the clip stage (demo preset) runs once with the exact reader, recording every read it
makes: the in-order scan (shot detection), the static-camera samples, each candidate pair's frames.
Then each decoder serves the same reads from a fresh open, timed alone (no shot detection, no
camera fit):

* ``before``: decord, as the clip stage used it: ``get_batch`` of 64 consecutive frames for the scan,
  then one reader per size and ``get_batch`` of each read's sorted indices (seeks inside decord);
* ``after``: ``Video.scan`` then ``Video.read`` for the same reads.

Printed per clip: frames delivered per second of decoding, the ratio after / before, and how many
delivered frames differ from the in-order decode by more than 8 grey levels on average (decord is
held to its own in-order decode at the same size; the exact reader to a plain PyAV loop, bit for bit).

Usage::

    python benchmarks/decode.py [--clips 8] [--size 240x320] [--real PATH ...]

Default real clips: ``../shared/videos/real/cockatoo.mp4`` (1280x720) and
``../shared/videos/real2/mouse_openfield_topdown.mp4`` where present. decord is optional
(``pip install decord``); without it only the ``after`` column is printed.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "videos"


def record_reads(path: str, cfg) -> list[tuple]:
    """The clip stage's reads on ``path``: ("scan", start, stop, size) then ("read", indices, size)."""
    from vid2pair.core.items import ClipTask
    from vid2pair.pipeline.plan import frames_to_decode
    from vid2pair.stages import decode
    from vid2pair.stages.clip import ClipStage

    reads: list[tuple] = []
    scan, read = decode.Video.scan, decode.Video.read

    def rec_scan(self, start=0, stop=None, size=(128, 96)):
        reads.append(("scan", start, stop, tuple(size)))
        yield from scan(self, start, stop, size)

    def rec_read(self, indices, size=None):
        reads.append(("read", [int(i) for i in indices], tuple(size or (self.width, self.height))))
        return read(self, indices, size)

    decode.Video.scan, decode.Video.read = rec_scan, rec_read
    try:
        ClipStage(cfg, frames=frames_to_decode(cfg))(ClipTask(source=path, clip_idx=0, chunk=0, clip_id="bench"))
    finally:
        decode.Video.scan, decode.Video.read = scan, read
    return reads


def serve_after(path: str, reads) -> tuple[float, int, dict]:
    from vid2pair.stages.decode import Video

    got: dict = {}
    t0 = time.perf_counter()
    n = 0
    with Video(path) as v:
        for r in reads:
            if r[0] == "scan":
                n += sum(1 for _ in v.scan(r[1], r[2], r[3]))
            else:
                fr = v.read(r[1], r[2])
                n += len(fr)
                for i, f in zip(r[1], fr):
                    got[(i, r[2])] = f
        stats = v.summary()
    return time.perf_counter() - t0, n, {**stats, "frames": got}


def serve_before(path: str, reads) -> tuple[float, int, dict]:
    import decord

    got: dict = {}
    readers: dict = {}
    t0 = time.perf_counter()
    n = 0
    for r in reads:
        if r[0] == "scan":
            vr = decord.VideoReader(path, ctx=decord.cpu(0), width=r[3][0], height=r[3][1], num_threads=1)
            stop = len(vr) if r[2] is None else min(r[2], len(vr))
            for k in range(r[1], stop, 64):
                n += len(vr.get_batch(list(range(k, min(k + 64, stop)))).asnumpy())
            del vr
        else:
            size = r[2]
            if size not in readers:
                readers[size] = decord.VideoReader(
                    path, ctx=decord.cpu(0), width=size[0], height=size[1], num_threads=1
                )
            uniq = sorted(set(r[1]))
            arr = readers[size].get_batch(uniq).asnumpy()
            n += len(r[1])
            for i, f in zip(uniq, arr):
                got[(i, size)] = f
    return time.perf_counter() - t0, n, {"frames": got}


def wrong_frames(path: str, frames: dict, reference) -> tuple[int, float]:
    """(frames off by > 8 grey levels on average, the largest mean error) against ``reference(size)``."""
    refs: dict = {}
    bad, worst = 0, 0.0
    for (i, size), f in frames.items():
        if size not in refs:
            refs[size] = reference(size)
        e = float(np.abs(f.astype(np.int16) - refs[size][i].astype(np.int16)).mean())
        worst = max(worst, e)
        bad += e > 8
    return bad, worst


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=8, help="throughput.py's synthetic demo clips")
    ap.add_argument("--size", default="240x320", help="HxW of the synthetic clips")
    ap.add_argument("--real", nargs="*", default=None, help="real clips (default: a 720p clip and the mouse clip)")
    a = ap.parse_args()

    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.runners import set_threads
    from vid2pair.pipeline.synthetic import make_demo_corpus
    from vid2pair.stages.decode import decode_all

    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False
    set_threads(1)
    h, w = map(int, a.size.lower().split("x"))
    work = Path(tempfile.mkdtemp(prefix="v2p-decode-"))
    clips = [str(p) for p in make_demo_corpus(work, n_static=a.clips, n_moving_camera=0, seed=0, width=w, height=h)]
    real = (
        a.real
        if a.real is not None
        else [
            str(p)
            for p in (SHARED / "real" / "cockatoo.mp4", SHARED / "real2" / "mouse_openfield_topdown.mp4")
            if p.exists()
        ]
    )
    cfg = load_config("demo", ["runner.progress=false"])
    print(
        f"{'clip':<34} {'frames':>7} {'before f/s':>11} {'after f/s':>10} {'after/before':>12} "
        f"{'wrong before':>12} {'wrong after':>11}  reads (after)"
    )
    tot = {"before": 0.0, "after": 0.0, "n": 0}
    synth = {"before": 0.0, "after": 0.0, "n": 0}
    for path in clips + real:
        reads = record_reads(path, cfg)
        t_after, n, after = serve_after(path, reads)
        bad_after, _ = wrong_frames(path, after["frames"], lambda size, p=path: decode_all(p, size))
        line = f"{Path(path).name[:34]:<34} {n:>7} "
        if have_decord:
            import decord

            t_before, n_b, before = serve_before(path, reads)

            def decord_in_order(size, path=path):
                vr = decord.VideoReader(path, ctx=decord.cpu(0), width=size[0], height=size[1], num_threads=1)
                return np.concatenate(
                    [vr.get_batch(list(range(k, min(k + 64, len(vr))))).asnumpy() for k in range(0, len(vr), 64)]
                )

            bad_before, worst = wrong_frames(path, before["frames"], decord_in_order)
            line += (
                f"{n_b / t_before:>11.0f} {n / t_after:>10.0f} {t_before / t_after:>12.2f} "
                f"{bad_before:>5} ({worst:4.1f}) {bad_after:>11}"
            )
            for acc in [tot] + ([synth] if path in clips else []):
                acc["before"] += t_before
                acc["after"] += t_after
                acc["n"] += n
        else:
            line += f"{'-':>11} {n / t_after:>10.0f} {'-':>12} {'-':>12} {bad_after:>11}"
        print(
            line + f"  decoded {after['decoded']}, seeks {after['seeks']}, re-reads {after['rereads']}, "
            f"FFmpeg errors {after['errors']}+{after['seek_errors']} (scan+seeks)"
        )
    if have_decord:
        for name, acc in (("synthetic demo clips", synth), ("all clips", tot)):
            if acc["n"]:
                print(
                    f"{name}: before {acc['n'] / acc['before']:.0f} frames/s, after {acc['n'] / acc['after']:.0f} "
                    f"frames/s: after / before = {acc['before'] / acc['after']:.2f}"
                )


if __name__ == "__main__":
    main()
