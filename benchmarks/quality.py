"""Quality of the pairs built from real footage: yield, reject reasons and quality scores per clip.

    python benchmarks/quality.py [--videos ../shared/videos] [--presets demo,framepainter_cpu]
                                 [--per-shot N] [--retries]

Builds each preset (the demo, and FramePainter's weight-free counterpart framepainter_cpu: DIS flow,
flow_chain tracking) on the real clips with the local runner, three times: with the quality stage
and the preset's spare candidates (``pairs.oversample``); with the quality stage and no spares
(``pairs.oversample=1``); and without the quality stage (the rules that existed before it: static
camera, motion, coarse coverage). ``--retries`` adds a build with a retry of a pair rejected for
motion at a shorter gap (``pairs.retry_shorter=1``). Prints, per
clip, the candidate pairs, how many were written and why the others were rejected; per signal, the
share of the pairs reaching the quality stage that keep it; and the quantiles of every quality
score. Nothing is timed.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _build(preset: str, videos: str, out: Path, extra: list[str]) -> dict:
    from vid2pair.pipeline.config import load_config
    from vid2pair.pipeline.runners import build

    cfg = load_config(preset, ["runner.name=local", "runner.progress=false", *extra])
    return build(cfg, videos, out, log_summary=False)


def _per_clip(out: Path) -> dict:
    from vid2pair.pipeline.io import read_index, read_rejects

    idx, rej = read_index(out), read_rejects(out)
    clips: dict = {}
    for src in sorted(set(idx["source"]) | set(rej["source"])):
        name = Path(src).name
        r = rej[(rej["source"] == src) & (rej["level"] != "signal")]
        pair_rej = r[r["level"] == "pair"]
        clips[name] = {"written": int((idx["source"] == src).sum()),
                       "pairs_rejected": int(len(pair_rej)),
                       "reasons": dict(Counter(f"{s}/{x}" for s, x in zip(r["stage"], r["reason"]))),
                       "signal_drops": dict(Counter(rej[(rej["source"] == src)
                                                        & (rej["level"] == "signal")]["reason"]))}
    return clips


def _signal_shares(out: Path) -> dict:
    from vid2pair.pipeline.io import read_index, read_rejects

    idx, rej = read_index(out), read_rejects(out)
    judged = len(idx) + int(((rej["stage"] == "quality") & (rej["level"] == "pair")).sum())
    shares = {}
    for sig in ("sketch", "drag", "coarse", "collage", "region_drag", "tracks"):
        have = int(idx["signals"].fillna("").str.split(",").apply(lambda s, g=sig: g in s).sum()) if len(idx) else 0
        shares[sig] = {"written_with": have, "of_written": len(idx),
                       "share_of_judged": round(have / judged, 3) if judged else None}
    return {"judged_pairs": judged, **shares}


def _score_quantiles(out: Path) -> dict:
    from vid2pair.pipeline.io import read_index

    idx = read_index(out)
    out_q = {}
    for c in sorted(c for c in idx.columns if c.startswith("q_")):
        v = idx[c].dropna()
        if len(v):
            out_q[c] = [round(float(x), 4) for x in v.quantile([0.0, 0.5, 1.0])]
    return out_q


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", default=str(ROOT.parent / "shared" / "videos"))
    ap.add_argument("--presets", default="demo,framepainter_cpu")
    ap.add_argument("--per-shot", type=int, default=None, help="pairs per static shot (default: the preset's)")
    ap.add_argument("--retries", action="store_true", help="also build with pairs.retry_shorter=1")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    a = ap.parse_args()
    if not Path(a.videos).exists():
        print(f"no real clips at {a.videos}: nothing to measure")
        return 0
    report = {}
    with tempfile.TemporaryDirectory() as d:
        for preset in a.presets.split(","):
            extra = [f"pairs.per_shot={a.per_shot}"] if a.per_shot else []
            res = {}
            modes = [("with quality", []), ("no spares", ["pairs.oversample=1"]),
                     ("without quality", ["quality.enabled=false", "pairs.oversample=1"])]
            if a.retries:
                modes.append(("with retries", ["pairs.retry_shorter=1"]))
            for mode, more in modes:
                out = Path(d) / f"{preset}-{mode.replace(' ', '_')}"
                s = _build(preset, a.videos, out, extra + more)
                res[mode] = {"samples": s["samples"], "clips_with_samples": s["clips_with_samples"],
                             "per_clip": _per_clip(out)}
                if mode == "with quality":
                    res[mode]["signals"] = _signal_shares(out)
                    res[mode]["scores"] = _score_quantiles(out)
            report[preset] = res
            w, wo, ns = res["with quality"], res["without quality"], res["no spares"]
            print(f"\n=== {preset} (per_shot {a.per_shot or 'of the preset'}): {w['samples']} samples from "
                  f"{w['clips_with_samples']} clips with the quality stage and spares; {ns['samples']} from "
                  f"{ns['clips_with_samples']} clips without spares (pairs.oversample=1); {wo['samples']} from "
                  f"{wo['clips_with_samples']} clips without the quality stage"
                  + (f"; {res['with retries']['samples']} from {res['with retries']['clips_with_samples']} clips "
                     f"with retries at a shorter gap" if a.retries else ""))
            print(f"{'clip':28s} {'no-qual':>7s} {'no-spare':>8s} {'with':>5s}  rejects (with the quality stage)")
            for clip, c in w["per_clip"].items():
                before = wo["per_clip"].get(clip, {}).get("written", 0)
                no_spare = ns["per_clip"].get(clip, {}).get("written", 0)
                why = ", ".join(f"{k} {v}" for k, v in sorted(c["reasons"].items()))
                drops = ", ".join(f"{k} {v}" for k, v in sorted(c["signal_drops"].items()))
                print(f"{clip:28s} {before:7d} {no_spare:8d} {c['written']:5d}  {why}"
                      + (f" | signals dropped: {drops}" if drops else ""))
            sg = w["signals"]
            print(f"signals kept, of the {sg['judged_pairs']} pairs the quality stage judged: " + ", ".join(
                f"{k} {v['written_with']} ({v['share_of_judged']})" for k, v in sg.items() if isinstance(v, dict)))
            print("quality scores of the written samples (min / median / max):")
            for c, q in w["scores"].items():
                print(f"  {c:28s} {q[0]:>9} {q[1]:>9} {q[2]:>9}")
    if a.json:
        Path(a.json).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
