"""``vid2pair inspect``: a terminal overview of an output directory."""

from __future__ import annotations

import json
from pathlib import Path

from vid2pair.pipeline.io import read_index, read_rejects


def inspect_output(out_dir, n_keys: int = 5) -> str:
    from vid2pair.pipeline.storage import Store

    out = Store(out_dir)
    if not out.exists("run.json") and not out.exists("summary.json"):
        raise FileNotFoundError(f"{out.uri} is not a vid2pair output directory (no run.json or summary.json)")
    idx, rej = read_index(out_dir), read_rejects(out_dir)
    lines = [f"{out.uri}"]
    if out.exists("summary.json"):
        s = json.loads(out.read_bytes("summary.json"))
        lines.append(
            f"  inputs {s['inputs']}  samples {s['samples']}  shards {s['shards']}  "
            f"clips with samples {s['clips_with_samples']}  clips rejected {s['clips_rejected']}  "
            f"wall {s['wall_s']} s  pairs/s {s['pairs_per_s']}  runner {s['runner']}"
        )
    else:
        lines.append("  (no summary.json: the run did not finish; counts below are from committed shards)")
    shards = sorted(set(idx["shard"])) if len(idx) else []
    n_clips = idx["clip_id"].nunique() if len(idx) else 0
    lines.append(f"  index: {len(idx)} samples in {len(shards)} shards, {n_clips} clips")
    if len(idx) and "split" in idx:
        per = idx.groupby("split")["clip_id"].agg(["size", "nunique"])
        lines.append(
            "  split: "
            + ", ".join(f"{sp} {int(r['size'])} samples from {int(r['nunique'])} clips" for sp, r in per.iterrows())
        )
    if len(idx) and "dt" in idx:
        lines.append(
            f"  dt: min {idx['dt'].min():.2f} s  median {idx['dt'].median():.2f} s  max {idx['dt'].max():.2f} s"
        )
    if len(idx) and "flow_p90" in idx:
        lines.append(
            f"  flow p90 px: min {idx['flow_p90'].min():.2f}  median {idx['flow_p90'].median():.2f}  "
            f"max {idx['flow_p90'].max():.2f}"
        )
    lines.append(f"  rejects: {len(rej)}")
    if len(rej):
        for (stage, reason), n in rej.groupby(["stage", "reason"]).size().sort_values(ascending=False).items():
            ex = rej[(rej.stage == stage) & (rej.reason == reason)].iloc[0]
            lines.append(f"    {stage:>14} {reason:<26} {n:>6}   e.g. {Path(ex.source).name}: {str(ex.detail)[:60]}")
    if len(idx):
        lines.append("  sample keys:")
        lines += [f"    {k}" for k in idx["key"].head(n_keys)]
    return "\n".join(lines)
