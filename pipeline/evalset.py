"""An evaluation set with real targets: export a split of an output directory in the shapes drag and
edit benchmarks use, and score edited results against the real target frames.

``export``: one item per sample of a split (the index's ``split`` column) or of a list of keys.

* ``dragbench``: DragDiffusion's DragBench layout, as its evaluation scripts read it
  (``drag_bench_evaluation/`` of Yujun-Shi/DragDiffusion): ``DIR/<category>/<item>/original_image.png``,
  ``user_drag.png`` (a picture of the drags; no script reads it) and ``meta_data.pkl``, a pickled dict
  ``{"prompt": str, "points": [[x, y], ...], "mask": uint8 (H, W) of 0 / 1}`` whose points alternate
  handle, target, handle, target ... in pixels of ``original_image.png``. Their scripts loop over ten
  fixed category folders, so the items go into one of them (``--category``, default
  ``other_objects``). ``target_image.png`` (the real result) and ``mask.png`` (the pickle's mask)
  sit beside them for ``score-edits``, which never loads a pickle.
* ``vid2pair-eval``: ``DIR/<item>/source.png``, ``target.png``, ``mask.png`` (the editable region,
  255 inside), ``handle_mask.png`` (what moves, on the source), ``region_XX.png`` (one per region
  drag), ``coarse.png`` (the coarse edit, its holes inpainted: a ready "signal" baseline)
  and ``edit.json`` (points, regions with DragNeXt's operation types, the signal used, the sample's
  quality scores).

Both carry ``items.json`` at the top: the format, the size, and every item with its key.

``score``: a folder of edited results, one per item (``RESULTS/<item>.png``,
``RESULTS/<item>/dragged_image.png`` as DragDiffusion writes it, or
``RESULTS/<category>/<item>/dragged_image.png``), scored against the real targets: PSNR / SSIM on the
whole image, in the editable region and outside it; DragNeXt's region fidelities IF_ed, IF_hh, IF_th
(1 - LPIPS when its weights are given, else 1 - (1 - SSIM), the weight-free stand-in, named as such),
against the real target; and point
accuracy (where each handle's content landed in the result, against the true target point). The
PSNR / SSIM code is the trainer's (``trainer/evaluate.py``).
"""

from __future__ import annotations

import json
import math
import pickle
from pathlib import Path
from typing import Optional, Sequence

import cv2
import numpy as np

from vid2pair.ops.image import to_gray

FORMATS = ("dragbench", "vid2pair-eval")
#: DragBench's category folders (its scripts loop over exactly these)
DRAGBENCH_CATEGORIES = (
    "art_work",
    "land_scape",
    "building_city_view",
    "building_countryside_view",
    "animals",
    "human_head",
    "human_upper_body",
    "human_full_body",
    "interior_design",
    "other_objects",
)
#: the editable region when a sample has no drag mask: its changed region, dilated by this (px at 512 wide)
MASK_DILATE_PX = 16
#: point accuracy: the handle's patch (px at 512 wide, odd) and the search margin beyond the drag's length
PATCH_PX, SEARCH_MARGIN_PX = 15, 16
#: PSNR of identical images (infinite) is reported as this
PSNR_CAP_DB = 100.0


class EvalSetError(ValueError):
    """A bad export request or a bad results folder: the message says what and where."""


# ---------------------------------------------------------------- geometry


def parse_size(size, w: int, h: int) -> tuple[int, int]:
    """``None`` (as stored), ``512`` (width; height by the aspect ratio) or ``"512x288"`` -> (W, H)."""
    if size in (None, "", 0):
        return w, h
    s = str(size).lower()
    try:
        if "x" in s:
            a, b = s.split("x", 1)
            W, H = int(a), int(b)
        else:
            W = int(s)
            H = max(1, int(round(h * W / w)))
    except ValueError:
        raise EvalSetError(f"--size {size}: a width (512) or WxH (512x288)") from None
    if W < 16 or H < 16:
        raise EvalSetError(f"--size {size}: at least 16 px a side")
    return W, H


def scale_points(pts: np.ndarray, src_wh: tuple[int, int], dst_wh: tuple[int, int]) -> np.ndarray:
    """(..., 2) x, y pixel coordinates of an image ``src_wh`` -> those of the image resized to ``dst_wh``
    (pixel centres map onto pixel centres)."""
    sx, sy = dst_wh[0] / src_wh[0], dst_wh[1] / src_wh[1]
    p = np.asarray(pts, np.float64).copy()
    p[..., 0] = (p[..., 0] + 0.5) * sx - 0.5
    p[..., 1] = (p[..., 1] + 0.5) * sy - 0.5
    return p


def resize_image(img: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    if (img.shape[1], img.shape[0]) == tuple(wh):
        return img
    shrink = wh[0] < img.shape[1]
    return cv2.resize(img, wh, interpolation=cv2.INTER_AREA if shrink else cv2.INTER_CUBIC)


def resize_mask(mask: np.ndarray, wh: tuple[int, int]) -> np.ndarray:
    """Label maps and binary masks: nearest neighbour (no new labels)."""
    if (mask.shape[1], mask.shape[0]) == tuple(wh):
        return mask
    return cv2.resize(mask, wh, interpolation=cv2.INTER_NEAREST)


def _disc(r: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


# ---------------------------------------------------------------- export


def _item_from_sample(s, wh: Optional[tuple[int, int]]) -> tuple[Optional[dict], str]:
    """The item of one sample at size ``wh`` (None: as stored), or (None, why not)."""
    src, tgt = s.image("src"), s.image("tgt")
    if src is None or tgt is None:
        return None, "no source or target image"
    h, w = src.shape[:2]
    W, H = wh or (w, h)
    drag, regions_json = s.json("drag.json"), s.json("region_drag.json")
    points = np.array([[p["source"], p["target"]] for p in (drag or {}).get("points", [])], np.float64)
    points = points.reshape(-1, 2, 2)
    label = s.image("region_masks")
    regions = []
    if regions_json and label is not None:
        label = label if label.ndim == 2 else label[..., 0]
        for r in regions_json.get("regions", []):
            m = label == int(r["mask_index"]) + 1
            if not m.any():
                continue
            regions.append(
                {
                    "mask": m,
                    "type": r.get("type", "deformation"),
                    "handles": np.asarray(r.get("handles", []), np.float64).reshape(-1, 2),
                    "targets": np.asarray(r.get("targets", []), np.float64).reshape(-1, 2),
                }
            )
    if len(points):
        signal = "drag"
    elif regions:
        signal = "region_drag"
        points = np.concatenate([np.stack([r["handles"], r["targets"]], 1) for r in regions], 0)
    else:
        return None, "no drag points (neither drag.json nor region_drag.json)"
    dm = s.image("drag_mask")
    if dm is not None:
        edit = (dm if dm.ndim == 2 else dm[..., 0]) > 127
        mask_from = "drag_mask"
    else:
        from vid2pair.stages.evidence import changed_mask  # the quality stage's changed region

        changed = changed_mask(src, tgt, 15.0, 1.5 * min(h, w) / 512)
        edit = cv2.dilate(changed.astype(np.uint8), _disc(max(1, round(MASK_DILATE_PX * w / 512)))) > 0
        mask_from = "changed_region"
    # what the user grabs: the region drags' regions and a disc round every handle (point accuracy's patch)
    handle = np.zeros((h, w), np.uint8)
    for (x, y), _ in points:
        cv2.circle(handle, (int(round(x)), int(round(y))), max(2, round(PATCH_PX * w / 1024)), 1, -1)
    handle = handle > 0
    for r in regions:
        handle |= r["mask"]
    edit |= handle
    coarse = s.image("coarse")
    if coarse is not None:
        holes = s.image("coarse_mask")
        holes = np.zeros((h, w), bool) if holes is None else (holes if holes.ndim == 2 else holes[..., 0]) > 127
        # the holes (what the move uncovered) inpainted from round them: filled from the source they would
        # keep the moved content where it was, which is no edit there
        coarse = cv2.inpaint(np.ascontiguousarray(coarse[..., :3]), holes.astype(np.uint8), 3, cv2.INPAINT_TELEA)
    m = s.meta
    item = {
        "key": s.key,
        "signal": signal,
        "size": [W, H],
        "orig_size": [w, h],
        "src": resize_image(src, (W, H)),
        "tgt": resize_image(tgt, (W, H)),
        "coarse": None if coarse is None else resize_image(coarse, (W, H)),
        "mask": resize_mask(edit.astype(np.uint8), (W, H)) > 0,
        "handle_mask": resize_mask(handle.astype(np.uint8), (W, H)) > 0,
        "points": scale_points(points, (w, h), (W, H)),
        "regions": [
            {
                "mask": resize_mask(r["mask"].astype(np.uint8), (W, H)) > 0,
                "type": r["type"],
                "handles": scale_points(r["handles"], (w, h), (W, H)),
                "targets": scale_points(r["targets"], (w, h), (W, H)),
            }
            for r in regions
        ],
        "mask_from": mask_from,
        "meta": {
            "clip_id": m.get("clip_id", s.row.get("clip_id")),
            "source": s.row.get("source"),
            "src_frame": m.get("src_frame", s.row.get("src_frame")),
            "tgt_frame": m.get("tgt_frame", s.row.get("tgt_frame")),
            "dt": s.row.get("dt"),
            "split": s.row.get("split"),
            "quality": m.get("quality", {}),
        },
    }
    return item, ""


def _png(path: Path, img: np.ndarray) -> None:
    if img.dtype == bool:
        img = img.astype(np.uint8) * 255
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(path), img):
        raise OSError(f"cannot write {path}")


def _draw_drags(img: np.ndarray, points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    out = img.copy()
    out[mask] = (0.7 * out[mask] + 0.3 * np.array([255, 255, 255])).astype(np.uint8)
    r = max(2, img.shape[1] // 100)
    for (x0, y0), (x1, y1) in points:
        a, b = (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1)))
        cv2.arrowedLine(out, a, b, (255, 255, 255), max(1, r // 2), tipLength=0.2)
        cv2.circle(out, a, r, (255, 0, 0), -1)
        cv2.circle(out, b, r, (0, 0, 255), -1)
    return out


def _operation(regions: list[dict], points: np.ndarray) -> str:
    """The item's operation type, DragNeXt's names: the region drags' types (joined by ``+`` when
    they differ), or a translation for point drags that all move alike, else ``deformation``."""
    if regions:
        types = sorted({r["type"] for r in regions})
        return types[0] if len(types) == 1 else "+".join(types)
    d = points[:, 1] - points[:, 0]
    if len(d) == 1 or np.abs(d - d.mean(0)).max() <= 0.1 * max(1.0, float(np.linalg.norm(d.mean(0)))):
        return "translation"
    return "deformation"


def export(
    out_dir,
    to,
    fmt: str = "vid2pair-eval",
    split: Optional[str] = "eval",
    keys: Sequence[str] | None = None,
    size=None,
    category: str = "other_objects",
    overwrite: bool = False,
) -> dict:
    """Write the samples of ``split`` (or ``keys``) of ``out_dir`` to ``to`` in ``fmt``; returns the
    manifest (also written as ``items.json``): the items written and those skipped, with why."""
    from vid2pair.pipeline.qc import QCDataset

    if fmt not in FORMATS:
        raise EvalSetError(f"--format {fmt!r}: one of {', '.join(FORMATS)}")
    if fmt == "dragbench" and category not in DRAGBENCH_CATEGORIES:
        raise EvalSetError(f"--category {category!r}: DragBench's scripts read only {', '.join(DRAGBENCH_CATEGORIES)}")
    ds = QCDataset(out_dir)
    idx = ds.index
    if keys:
        unknown = sorted(set(keys) - set(idx["key"]))
        if unknown:
            raise EvalSetError(f"{len(unknown)} key(s) not in {out_dir}'s index, e.g. {unknown[0]}")
        sel = list(keys)
    elif split == "all":
        sel = idx["key"].tolist()
    else:
        if "split" not in idx.columns:
            raise EvalSetError(f"{out_dir}'s index has no split column (built before output.eval_frac): pass --keys")
        sel = idx.loc[idx["split"] == split, "key"].tolist()
        if not sel:
            counts = idx["split"].value_counts().to_dict()
            raise EvalSetError(
                f"no sample of split {split!r} in {out_dir} (splits: {counts}; build with "
                "output.eval_frac > 0 for an eval split, or pass --split train / --keys)"
            )
    to = Path(to)
    if to.exists() and any(to.iterdir()) and not overwrite:
        raise EvalSetError(f"{to} exists and is not empty (--overwrite to replace its items)")
    to.mkdir(parents=True, exist_ok=True)
    items, skipped, size_wh = [], [], None
    for i in range(0, len(sel), 16):
        for s in ds.load_many(sel[i : i + 16]):
            src = s.image("src")
            wh = None if src is None else parse_size(size, src.shape[1], src.shape[0])
            it, why = _item_from_sample(s, wh)
            if it is None:
                skipped.append({"key": s.key, "why": why})
                continue
            size_wh = size_wh or it["size"]
            items.append(_write_item(it, to, fmt, category))
    manifest = {
        "format": fmt,
        "source": str(out_dir),
        "split": None if keys else split,
        "size": size_wh,
        "category": category if fmt == "dragbench" else None,
        "items": items,
        "skipped": skipped,
    }
    (to / "items.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def _write_item(it: dict, to: Path, fmt: str, category: str) -> dict:
    name = it["key"]
    pts = it["points"]
    op = _operation(it["regions"], pts)
    if fmt == "dragbench":
        d = to / category / name
        d.mkdir(parents=True, exist_ok=True)
        _png(d / "original_image.png", it["src"])
        _png(d / "target_image.png", it["tgt"])
        _png(d / "mask.png", it["mask"])  # the pickle's mask as a PNG: score-edits unpickles nothing
        _png(d / "user_drag.png", _draw_drags(it["src"], pts, it["mask"]))
        flat = [[int(round(x)), int(round(y))] for pair in pts for (x, y) in pair]  # handle, target, ...
        with open(d / "meta_data.pkl", "wb") as f:
            pickle.dump({"prompt": "", "points": flat, "mask": it["mask"].astype(np.uint8)}, f)
        rel = f"{category}/{name}"
    else:
        d = to / name
        d.mkdir(parents=True, exist_ok=True)
        _png(d / "source.png", it["src"])
        _png(d / "target.png", it["tgt"])
        _png(d / "mask.png", it["mask"])
        _png(d / "handle_mask.png", it["handle_mask"])
        if it["coarse"] is not None:
            _png(d / "coarse.png", it["coarse"])
        regions = []
        for j, r in enumerate(it["regions"]):
            _png(d / f"region_{j:02d}.png", r["mask"])
            regions.append(
                {
                    "mask": f"region_{j:02d}.png",
                    "operation": r["type"],
                    "handles": np.round(r["handles"], 2).tolist(),
                    "targets": np.round(r["targets"], 2).tolist(),
                }
            )
        edit = {
            "key": name,
            "signal": it["signal"],
            "operation": op,
            "size": it["size"],
            "orig_size": it["orig_size"],
            "points": [{"handle": np.round(a, 2).tolist(), "target": np.round(b, 2).tolist()} for a, b in pts],
            "regions": regions,
            "editable_mask": "mask.png",
            "handle_mask": "handle_mask.png",
            "mask_from": it["mask_from"],
            "coarse": "coarse.png" if it["coarse"] is not None else None,
            **it["meta"],
        }
        (d / "edit.json").write_text(json.dumps(edit, indent=1, default=_json_default))
        rel = name
    return {
        "item": name,
        "path": rel,
        "signal": it["signal"],
        "operation": op,
        "n_points": int(len(pts)),
        "points": np.round(pts, 2).tolist(),
        "mask_frac": round(float(it["mask"].mean()), 5),
    }


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    return str(o)


# ---------------------------------------------------------------- scoring


def _read_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise EvalSetError(f"cannot read {path} as an image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _read_mask(path: Path) -> np.ndarray:
    m = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if m is None:
        raise EvalSetError(f"cannot read {path} as a mask")
    return m > 127


def load_items(eval_dir) -> tuple[dict, list[dict]]:
    """The manifest and each item's arrays (source, target, editable mask, handle mask, points (N, 2, 2))."""
    eval_dir = Path(eval_dir)
    mf = eval_dir / "items.json"
    if not mf.is_file():
        raise EvalSetError(f"{eval_dir} is not an exported evaluation set (no items.json; run vid2pair export)")
    try:
        manifest = json.loads(mf.read_text())
        manifest["format"], manifest["items"]
    except (ValueError, KeyError, TypeError) as e:
        raise EvalSetError(f"{mf} is not an export manifest ({type(e).__name__}: {e})") from None
    out = []
    for rec in manifest["items"]:
        d = eval_dir / rec["path"]
        if manifest["format"] == "dragbench":
            # the pickle's points and mask, from items.json and mask.png (a pickle is never loaded: it
            # can run code)
            src, tgt = _read_rgb(d / "original_image.png"), _read_rgb(d / "target_image.png")
            mask = _read_mask(d / "mask.png")
            pts, handle = np.asarray(rec["points"], np.float64).reshape(-1, 2, 2), None
        else:
            src, tgt, mask = _read_rgb(d / "source.png"), _read_rgb(d / "target.png"), _read_mask(d / "mask.png")
            e = json.loads((d / "edit.json").read_text())
            pts = np.array([[p["handle"], p["target"]] for p in e["points"]], np.float64).reshape(-1, 2, 2)
            handle = _read_mask(d / "handle_mask.png")
        if handle is None:
            handle = np.zeros(mask.shape, np.uint8)
            r = max(2, round(PATCH_PX * mask.shape[1] / 1024))
            for (x, y), _ in pts:
                cv2.circle(handle, (int(round(x)), int(round(y))), r, 1, -1)
            handle = handle > 0
        out.append(
            {"item": rec["item"], "dir": d, "src": src, "tgt": tgt, "mask": mask, "handle": handle, "points": pts}
        )
    return manifest, out


def find_result(results: Path, item: str, category: Optional[str]) -> Optional[Path]:
    """``RESULTS/<item>.png``, ``RESULTS/<item>/dragged_image.png`` (or ``result.png``), or
    ``RESULTS/<category>/<item>/dragged_image.png``: the first that exists."""
    cands = [
        results / f"{item}.png",
        results / f"{item}.jpg",
        results / item / "dragged_image.png",
        results / item / "result.png",
    ]
    if category:
        cands.append(results / category / item / "dragged_image.png")
    return next((p for p in cands if p.is_file()), None)


def _shift_handle(handle: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """The handle region moved by the drags' mean displacement: where its content should be."""
    d = (pts[:, 1] - pts[:, 0]).mean(0) if len(pts) else np.zeros(2)
    M = np.float32([[1, 0, d[0]], [0, 1, d[1]]])
    h, w = handle.shape
    return cv2.warpAffine(handle.astype(np.uint8), M, (w, h), flags=cv2.INTER_NEAREST) > 0


def point_errors(src: np.ndarray, result: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """For each (handle, target) pair: the distance (px) from the true target to where the handle's
    patch of the source best matches the result (normalised cross-correlation of grey patches,
    searched over a window round the target wide enough to hold the handle: content left in place
    scores the drag's length). Only places whose contrast is at least half the patch's count: a
    faint trace (an inpainted hole where the content was) is not the content, whatever its
    normalised shape."""
    g0 = to_gray(src).astype(np.float32)
    g1 = to_gray(result).astype(np.float32)
    h, w = g0.shape
    half = max(3, int(round(PATCH_PX * w / 512)) // 2)
    errs = []
    for (hx, hy), (tx, ty) in pts:
        cx, cy = int(round(hx)), int(round(hy))
        x0, y0 = max(0, cx - half), max(0, cy - half)
        patch = g0[y0 : min(h, cy + half + 1), x0 : min(w, cx + half + 1)]
        ox, oy = cx - x0, cy - y0  # the handle within its (possibly clipped) patch
        r = int(math.ceil(math.hypot(tx - hx, ty - hy) + SEARCH_MARGIN_PX * w / 512)) + half
        sx0, sy0 = max(0, int(round(tx)) - r), max(0, int(round(ty)) - r)
        win = g1[sy0 : min(h, int(round(ty)) + r + 1), sx0 : min(w, int(round(tx)) + r + 1)]
        if win.shape[0] < patch.shape[0] or win.shape[1] < patch.shape[1] or patch.std() < 1e-3:
            errs.append(float("nan"))
            continue
        res = cv2.matchTemplate(win, patch, cv2.TM_CCOEFF_NORMED)
        ph, pw = patch.shape
        mu = cv2.boxFilter(win, -1, (pw, ph), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT)
        var = cv2.boxFilter(win * win, -1, (pw, ph), anchor=(0, 0), borderType=cv2.BORDER_CONSTANT) - mu * mu
        sd = np.sqrt(np.maximum(var[: res.shape[0], : res.shape[1]], 0.0))
        res = np.where(sd >= 0.5 * patch.std(), res, -2.0).astype(np.float32)
        _, _, _, (bx, by) = cv2.minMaxLoc(res)
        errs.append(float(math.hypot(sx0 + bx + ox - tx, sy0 + by + oy - ty)))
    return np.asarray(errs, np.float64)


class RegionFidelity:
    """The distance behind DragNeXt's region fidelity (IF = 1 - distance) between an image region of the result
    and one of the reference: LPIPS over the region's bounding box with the outside blanked, when
    LPIPS weights are given; else the weight-free stand-in 1 - SSIM over the region."""

    def __init__(self, lpips_weights: Optional[str] = None):
        self.model, self.name = None, "1 - SSIM over the region (weight-free stand-in for LPIPS)"
        if lpips_weights:
            p = Path(lpips_weights)
            if not p.is_file():
                raise EvalSetError(f"--lpips {p}: no such file (the LPIPS linear-layer weights, e.g. alex.pth)")
            try:
                import lpips
            except ImportError as e:
                raise EvalSetError("--lpips needs the `lpips` package (pip install lpips)") from e
            try:
                self.model = lpips.LPIPS(net="alex", model_path=str(p), verbose=False).eval()
            except Exception as e:  # the backbone's weights come from torchvision's cache
                raise EvalSetError(
                    f"LPIPS could not load ({e}); its AlexNet backbone needs torchvision's "
                    "weights in the local torch hub cache"
                ) from e
            self.name = "LPIPS (alex)"

    def __call__(self, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
        import torch

        from vid2pair.trainer.evaluate import masked_psnr_ssim

        if not mask.any():
            return float("nan")
        ta = torch.from_numpy(a).permute(2, 0, 1)[None].float() / 127.5 - 1
        tb = torch.from_numpy(b).permute(2, 0, 1)[None].float() / 127.5 - 1
        m = torch.from_numpy(mask)[None, None]
        if self.model is None:
            return float(1 - masked_psnr_ssim(ta, tb, m)[1][0])
        ys, xs = np.nonzero(mask)
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
        mm = m[..., box[0], box[1]].float()
        with torch.no_grad():
            return float(self.model(ta[..., box[0], box[1]] * mm, tb[..., box[0], box[1]] * mm).flatten()[0])


def score_item(it: dict, result: np.ndarray, fid: RegionFidelity) -> dict:
    """Every score of one result against its item's real target."""
    import torch

    from vid2pair.trainer.evaluate import masked_psnr_ssim, psnr_ssim

    tgt, src, mask = it["tgt"], it["src"], it["mask"]
    t = lambda x: torch.from_numpy(x).permute(2, 0, 1)[None].float() / 127.5 - 1  # noqa: E731
    r, g = t(result), t(tgt)
    out = {}
    p, s = psnr_ssim(r, g)
    out["psnr"], out["ssim"] = min(float(p[0]), PSNR_CAP_DB), float(s[0])
    for name, m in (("edit", mask), ("outside", ~mask)):
        p, s = masked_psnr_ssim(r, g, torch.from_numpy(m)[None, None])
        out[f"psnr_{name}"], out[f"ssim_{name}"] = min(float(p[0]), PSNR_CAP_DB), float(s[0])
    # DragNeXt's region fidelities (IF = 1 - distance, DragBench's convention), each between the result and
    # the real target (DragNeXt has no target and compares with the input): outside the editable region
    # (ed: nothing there should change), on the handle region (hh: what is left where the content was)
    # and on the handle region moved by the drags (th: the content where it arrived)
    handle = it["handle"]
    out["IF_ed"] = 1 - fid(result, tgt, ~mask)
    out["IF_hh"] = 1 - fid(result, tgt, handle)
    out["IF_th"] = 1 - fid(result, tgt, _shift_handle(handle, it["points"]))
    e = point_errors(src, result, it["points"])
    ok = np.isfinite(e)
    out["point_error_px"] = float(e[ok].mean()) if ok.any() else float("nan")
    out["point_error_median_px"] = float(np.median(e[ok])) if ok.any() else float("nan")
    out["points_within_5px"] = float((e[ok] <= 5.0 * tgt.shape[1] / 512).mean()) if ok.any() else float("nan")
    return out


SCORE_COLUMNS = (
    "psnr",
    "ssim",
    "psnr_edit",
    "ssim_edit",
    "psnr_outside",
    "ssim_outside",
    "IF_ed",
    "IF_hh",
    "IF_th",
    "point_error_px",
    "point_error_median_px",
    "points_within_5px",
)
#: which way is better for each score
HIGHER_IS_BETTER = {c: not c.startswith("point_error") for c in SCORE_COLUMNS}


def score(
    eval_dir, results, lpips_weights: Optional[str] = None, output: Optional[str] = None, allow_missing: bool = False
) -> dict:
    """Score ``results`` against ``eval_dir``'s targets; returns (and writes to ``output``, default
    ``RESULTS/scores.json`` and ``scores.csv``) the per-item scores and their means. A missing result is
    an error unless ``allow_missing`` (then only the items with a result are scored, and counted)."""
    results = Path(results)
    if not results.is_dir():
        raise EvalSetError(f"{results}: no such results folder")
    manifest, items = load_items(eval_dir)
    if not items:
        raise EvalSetError(f"{eval_dir} holds no items")
    found = {it["item"]: find_result(results, it["item"], manifest.get("category")) for it in items}
    missing = [k for k, p in found.items() if p is None]
    if missing and allow_missing and len(missing) < len(items):
        items = [it for it in items if found[it["item"]] is not None]
    elif missing:
        raise EvalSetError(
            f"{len(missing)} of {len(items)} result(s) missing in {results}, e.g. {missing[0]} "
            f"(looked for {missing[0]}.png, {missing[0]}/dragged_image.png, {missing[0]}/result.png)"
        )
    fid = RegionFidelity(lpips_weights)
    rows = []
    for it in items:
        res = _read_rgb(found[it["item"]])
        if res.shape != it["tgt"].shape:
            raise EvalSetError(
                f"{found[it['item']]}: {res.shape[1]}x{res.shape[0]}, but the target is "
                f"{it['tgt'].shape[1]}x{it['tgt'].shape[0]} (export with --size to the model's size)"
            )
        rows.append({"item": it["item"], **score_item(it, res, fid)})
    mean = {c: _nanmean([r[c] for r in rows]) for c in SCORE_COLUMNS}
    report = {
        "eval_dir": str(eval_dir),
        "results": str(results),
        "n": len(rows),
        "missing": missing,
        "fidelity": fid.name,
        "higher_is_better": HIGHER_IS_BETTER,
        "mean": mean,
        "items": rows,
    }
    out = Path(output) if output else results
    out.mkdir(parents=True, exist_ok=True)
    (out / "scores.json").write_text(json.dumps(report, indent=1))
    with open(out / "scores.csv", "w") as f:
        f.write(",".join(("item", *SCORE_COLUMNS)) + "\n")
        for r in rows:
            f.write(",".join([r["item"], *(f"{r[c]:.5g}" for c in SCORE_COLUMNS)]) + "\n")
    return report


def _nanmean(xs) -> float:
    a = np.asarray([x for x in xs if x is not None], np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else float("nan")


def format_table(report: dict) -> str:
    lines = [
        f"{report['n']} item(s); region fidelity IF_* = 1 - distance, distance = {report['fidelity']}",
        f"{'score':<20}{'mean':>10}  better",
    ]
    for c in SCORE_COLUMNS:
        lines.append(f"{c:<20}{report['mean'][c]:>10.4g}  {'higher' if report['higher_is_better'][c] else 'lower'}")
    return "\n".join(lines)


# ---------------------------------------------------------------- CLI


def cmd_export(a) -> int:
    try:
        m = export(
            a.output_dir,
            a.to,
            a.format,
            a.split,
            a.keys.split(",") if a.keys else None,
            a.size,
            a.category,
            a.overwrite,
        )
    except (EvalSetError, OSError) as e:
        print(f"error: {e}")
        return 2
    print(
        f"exported {len(m['items'])} item(s) ({a.format}, {m['size'][0]}x{m['size'][1]} px) to {a.to}"
        if m["items"]
        else f"exported no item to {a.to}"
    )
    for s in m["skipped"][:5]:
        print(f"  skipped {s['key']}: {s['why']}")
    if len(m["skipped"]) > 5:
        print(f"  ... {len(m['skipped']) - 5} more skipped (items.json lists them)")
    return 0


def cmd_score_edits(a) -> int:
    try:
        r = score(a.eval_dir, a.results, a.lpips, a.output, a.allow_missing)
    except (EvalSetError, OSError, ValueError, KeyError) as e:  # a damaged export: its file named
        print(f"error: {type(e).__name__ + ': ' if not isinstance(e, EvalSetError) else ''}{e}")
        return 2
    print(format_table(r))
    if r["missing"]:
        print(f"{len(r['missing'])} item(s) without a result were not scored (--allow-missing)")
    print(f"per item: {Path(a.output or a.results) / 'scores.csv'}")
    return 0


def evalset_add_subparsers(sub) -> None:
    e = sub.add_parser("export", help="write a split as an evaluation set (DragBench layout or vid2pair-eval)")
    e.add_argument("output_dir", help="a vid2pair output directory")
    e.add_argument("--format", choices=FORMATS, default="vid2pair-eval")
    e.add_argument("--split", default="eval", help="the index's split to export (default: eval; all: every sample)")
    e.add_argument("--keys", help="comma-separated sample keys instead of a split")
    e.add_argument("--to", required=True, help="the folder to write")
    e.add_argument("--size", help="W (height by the aspect ratio; DragBench uses 512) or WxH; default: as stored")
    e.add_argument(
        "--category", default="other_objects", help="dragbench: the category folder (one of DragBench's ten)"
    )
    e.add_argument("--overwrite", action="store_true", help="write into a folder that is not empty")
    e.set_defaults(func=cmd_export)
    s = sub.add_parser("score-edits", help="score edited results against an exported set's real targets")
    s.add_argument("eval_dir", help="a folder written by vid2pair export")
    s.add_argument("results", help="the edited results: <item>.png or <item>/dragged_image.png per item")
    s.add_argument("--lpips", help="LPIPS linear-layer weights (a local file); default: the 1-SSIM stand-in")
    s.add_argument("--allow-missing", action="store_true", help="score the items that have a result, skip the rest")
    s.add_argument("--output", help="where scores.json / scores.csv go (default: the results folder)")
    s.set_defaults(func=cmd_score_edits)
