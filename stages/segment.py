"""Segmenters for the piecewise-affine collage (pure: arrays in, a label map out).

Every segmenter maps a SOURCE image ``(H, W, 3)`` uint8 RGB (plus, optionally, its forward flow
``(H, W, 2)``) to a label map ``(H, W)`` int32: ``0..N-1`` are segments, ``-1`` marks pixels that
belong to no segment (those are flow-splatted by the collage, as Magic Fixup does with the pixels
SAM leaves uncovered).

Backends (:func:`make_segmenter`)
---------------------------------
``felzenszwalb`` (weight-free, the default)
    scikit-image's graph-based segmentation (Felzenszwalb & Huttenlocher 2004) on the image
    **stacked with the flow** (``[R, G, B, w * dx, w * dy]``, RGB in [0, 1]): an edge between two
    pixels is cheap only if they have similar colour *and* similar motion, so segments stop at
    motion boundaries even where the colours match. Why Felzenszwalb rather than SLIC: its
    segments follow image/motion edges and have free size and shape (a uniform wall is one
    segment, a textured object a few), which is closer to SAM's object/part masks than SLIC's
    compact superpixels of a fixed size, whose boundaries cut through objects on a regular grid
    and whose similarity fits would follow any non-rigid flow, so the collage would degenerate
    into a (blocky) flow warp. Parameters are given for a 240-px short side and rescaled with
    the frame (``scale`` and ``min_size`` with the pixel count, ``sigma`` and the flow weight
    with the short side). ``max_short_side`` (``collage.segment_short_side``) runs the
    segmentation on a downscaled copy and upsamples the labels (nearest): ~5x faster at
    1024x576 with no loss measured on the synthetic clips.
``slic`` (weight-free)
    scikit-image SLIC superpixels on the same image + flow stack (compact, ~``n_segments``).
    Kept for comparison and for clips whose motion is not piecewise rigid.
``sam``
    Segment Anything's ``SamAutomaticMaskGenerator`` (as in Magic Fixup's data pipeline).
    Overlapping masks are flattened to a label map: masks are painted from the largest to the
    smallest, so parts (small masks) win over the wholes that contain them; a mask left with
    ``min_area`` pixels or fewer is dropped (Magic Fixup keeps SAM masks with area > 300).
    Weights: ``checkpoint`` or the model cache (``sam_<model_type>``, see ``pipeline.models``);
    ``model=`` injects a built ``Sam`` (tests use random weights).
"""

from __future__ import annotations

import warnings
from typing import Any, Optional

import cv2
import numpy as np

from vid2pair.core.device import resolve_device

__all__ = [
    "FelzenszwalbSegmenter",
    "SlicSegmenter",
    "SamSegmenter",
    "make_segmenter",
    "relabel",
    "SAM_EXTRA_MESSAGE",
    "SEGMENTERS",
    "REFERENCE_SHORT_SIDE",
]

SAM_EXTRA_MESSAGE = "segment-anything is not installed: pip install 'vid2pair[collage]'"
SEGMENTERS = ("felzenszwalb", "slic", "sam")
REFERENCE_SHORT_SIDE = 240  # the weight-free parameters are tuned for this short side


def segment_pixels(labels: np.ndarray, n: int) -> list[np.ndarray]:
    """Flat pixel indices of each segment 0..n-1 (one sort, not n scans)."""
    flat = labels.ravel()
    idx = np.flatnonzero(flat >= 0)
    lab = flat[idx]
    order = np.argsort(lab, kind="stable")
    idx, lab = idx[order], lab[order]
    bounds = np.searchsorted(lab, np.arange(n + 1))
    return [idx[bounds[k] : bounds[k + 1]] for k in range(n)]


def relabel(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Renumber a label map to ``0..N-1`` in raster order of first appearance; segments with
    ``min_area`` pixels or fewer (and negative labels) become ``-1``."""
    lab = np.asarray(labels).astype(np.int64, copy=False)
    flat = lab.ravel()
    valid = flat >= 0
    out = np.full(flat.shape, -1, np.int32)
    if not valid.any():
        return out.reshape(lab.shape)
    uniq, first, inv, counts = np.unique(flat[valid], return_index=True, return_inverse=True, return_counts=True)
    keep = counts > min_area
    order = np.argsort(first[keep], kind="stable")  # raster order: deterministic ids
    new_ids = np.full(len(uniq), -1, np.int32)
    new_ids[np.flatnonzero(keep)[order]] = np.arange(int(keep.sum()), dtype=np.int32)
    out[valid] = new_ids[inv.ravel()]
    return out.reshape(lab.shape)


def _features(img: np.ndarray, flow: Optional[np.ndarray], flow_weight: float, ref_scale: float) -> np.ndarray:
    feat = np.asarray(img, np.float32) / 255.0
    if flow is not None and flow_weight > 0:
        f = np.asarray(flow, np.float32) * (flow_weight * ref_scale)
        feat = np.concatenate([feat, f], axis=-1)
    return np.ascontiguousarray(feat)


def _check(img: np.ndarray, flow: Optional[np.ndarray]) -> None:
    img = np.asarray(img)
    if img.ndim != 3 or img.shape[-1] != 3 or img.dtype != np.uint8:
        raise ValueError(f"segmenter expects an (H, W, 3) uint8 RGB image, got {img.shape} {img.dtype}")
    if flow is not None and np.asarray(flow).shape != img.shape[:2] + (2,):
        raise ValueError(f"flow {np.asarray(flow).shape} does not match the image {img.shape}")


def _analysis_scale(img: np.ndarray, flow: Optional[np.ndarray], max_short_side: Optional[int]):
    """Downscale image (area) and flow (bilinear, vectors rescaled) so the short side is at most
    ``max_short_side``; -> (img, flow, (H, W) of the original)."""
    h, w = img.shape[:2]
    if not max_short_side or min(h, w) <= max_short_side:
        return img, flow, None
    f = max_short_side / min(h, w)
    sw, sh = max(1, int(round(w * f))), max(1, int(round(h * f)))
    img = cv2.resize(img, (sw, sh), interpolation=cv2.INTER_AREA)
    if flow is not None:
        flow = cv2.resize(np.asarray(flow, np.float32), (sw, sh), interpolation=cv2.INTER_LINEAR)
        flow *= np.float32([sw / w, sh / h])
    return img, flow, (h, w)


def _upscale_labels(lab: np.ndarray, size) -> np.ndarray:
    if size is None:
        return lab
    return cv2.resize(lab.astype(np.int32), (size[1], size[0]), interpolation=cv2.INTER_NEAREST)


class FelzenszwalbSegmenter:
    """Felzenszwalb-Huttenlocher segmentation of image + flow (see the module docstring)."""

    name = "felzenszwalb"

    def __init__(
        self,
        scale: float = 300.0,
        sigma: float = 0.8,
        min_size: int = 50,
        flow_weight: float = 1.0,
        min_area: int = 300,
        max_short_side: Optional[int] = None,
    ) -> None:
        self.scale, self.sigma, self.min_size = float(scale), float(sigma), int(min_size)
        self.flow_weight, self.min_area = float(flow_weight), int(min_area)
        self.max_short_side = max_short_side
        import skimage

        self.version = f"skimage-{skimage.__version__}/felzenszwalb-k{scale:g}-s{sigma:g}-w{flow_weight:g}"

    def __call__(self, img: np.ndarray, flow: Optional[np.ndarray] = None) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        _check(img, flow)
        img, flow, full = _analysis_scale(img, flow, self.max_short_side)
        h, w = img.shape[:2]
        r = REFERENCE_SHORT_SIDE / min(h, w)  # px -> reference px
        feat = _features(img, flow, self.flow_weight, r)
        # k and min_size are pixel counts, sigma a length: rescale them from the reference frame
        with warnings.catch_warnings():  # a 5-channel stack is intended ("interpreted as multichannel")
            warnings.simplefilter("ignore", RuntimeWarning)
            lab = felzenszwalb(
                feat,
                scale=self.scale / (r * r),
                sigma=self.sigma / r,
                min_size=max(1, int(round(self.min_size / (r * r)))),
                channel_axis=-1,
            )
        return relabel(_upscale_labels(lab, full), self.min_area)


class SlicSegmenter:
    """SLIC superpixels of image + flow."""

    name = "slic"

    def __init__(
        self,
        n_segments: int = 150,
        compactness: float = 10.0,
        flow_weight: float = 1.0,
        min_area: int = 300,
        max_short_side: Optional[int] = None,
    ) -> None:
        self.n_segments, self.compactness = int(n_segments), float(compactness)
        self.flow_weight, self.min_area = float(flow_weight), int(min_area)
        self.max_short_side = max_short_side
        import skimage

        self.version = f"skimage-{skimage.__version__}/slic-n{n_segments}-c{compactness:g}-w{flow_weight:g}"

    def __call__(self, img: np.ndarray, flow: Optional[np.ndarray] = None) -> np.ndarray:
        from skimage.segmentation import slic

        _check(img, flow)
        img, flow, full = _analysis_scale(img, flow, self.max_short_side)
        h, w = img.shape[:2]
        r = REFERENCE_SHORT_SIDE / min(h, w)
        if flow is not None and self.flow_weight > 0:
            lab_img = cv2.cvtColor(img, cv2.COLOR_RGB2LAB).astype(np.float32)
            lab_img *= np.float32(100.0 / 255.0)  # ~CIELAB units (L in [0, 100]), as slic's own rgb2lab
            f = np.asarray(flow, np.float32) * np.float32(self.flow_weight * r * 100.0)
            feat = np.concatenate([lab_img, f], axis=-1)
            # slic rescales a non-RGB stack to [0, 1] as a whole: rescale the compactness with it so
            # it keeps its meaning relative to CIELAB units
            rng_ = float(feat.max() - feat.min()) or 1.0
            lab = slic(
                feat,
                n_segments=self.n_segments,
                compactness=self.compactness / rng_,
                convert2lab=False,
                channel_axis=-1,
                start_label=0,
                enforce_connectivity=True,
            )
        else:
            lab = slic(
                img,
                n_segments=self.n_segments,
                compactness=self.compactness,
                channel_axis=-1,
                start_label=0,
                enforce_connectivity=True,
            )
        return relabel(_upscale_labels(lab, full), self.min_area)


class SamSegmenter:
    """Segment Anything automatic masks flattened to a label map (see the module docstring)."""

    name = "sam"

    def __init__(
        self,
        model_type: str = "vit_b",
        checkpoint: Optional[str] = None,
        *,
        points_per_side: int = 32,
        min_area: int = 300,
        device: str = "auto",
        model: Any = None,
        **generator_kwargs,
    ) -> None:
        try:
            from segment_anything import SamAutomaticMaskGenerator, sam_model_registry
        except ImportError:
            raise ImportError(SAM_EXTRA_MESSAGE) from None
        if model_type not in sam_model_registry or model_type == "default":
            raise ValueError(f"sam model_type must be one of vit_b, vit_l, vit_h, got {model_type!r}")
        self.device = resolve_device(device)
        if model is None:
            from vid2pair.core.weights import resolve_weights

            # raises MissingWeightsError naming `vid2pair models fetch sam_<type>`
            path = resolve_weights(f"sam_{model_type}", explicit=checkpoint, config_key="collage.sam_checkpoint")
            model = sam_model_registry[model_type](checkpoint=str(path))
            tag = path.stem
        else:
            tag = "injected"
        self.model = model.to(self.device).eval()
        self.min_area = int(min_area)
        self.generator = SamAutomaticMaskGenerator(self.model, points_per_side=int(points_per_side), **generator_kwargs)
        self.version = f"segment-anything/sam_{model_type}-{tag}/pps{points_per_side}"

    def masks(self, img: np.ndarray) -> list[dict]:
        import torch

        with torch.inference_mode():
            return self.generator.generate(np.ascontiguousarray(img))

    def __call__(self, img: np.ndarray, flow: Optional[np.ndarray] = None) -> np.ndarray:
        _check(img, flow)
        masks = self.masks(img)
        lab = np.full(img.shape[:2], -1, np.int32)
        for k, m in enumerate(sorted(masks, key=lambda d: -int(d["area"]))):
            if int(m["area"]) > self.min_area:
                lab[np.asarray(m["segmentation"], bool)] = k
        return relabel(lab, self.min_area)


def make_segmenter(cfg: Any, model: Any = None):
    """The segmenter a :class:`~vid2pair.stages.collage.CollageConfig` describes; ``model`` injects a SAM model."""
    if cfg.segmenter == "felzenszwalb":
        return FelzenszwalbSegmenter(
            scale=cfg.fz_scale,
            sigma=cfg.fz_sigma,
            min_size=cfg.fz_min_size,
            flow_weight=cfg.flow_weight,
            min_area=cfg.min_area,
            max_short_side=cfg.segment_short_side,
        )
    if cfg.segmenter == "slic":
        return SlicSegmenter(
            n_segments=cfg.slic_segments,
            compactness=cfg.slic_compactness,
            flow_weight=cfg.flow_weight,
            min_area=cfg.min_area,
            max_short_side=cfg.segment_short_side,
        )
    if cfg.segmenter == "sam":
        return SamSegmenter(
            cfg.sam_model_type,
            cfg.sam_checkpoint,
            points_per_side=cfg.points_per_side,
            min_area=cfg.min_area,
            device=cfg.device,
            model=model,
        )
    raise ValueError(f"unknown segmenter {cfg.segmenter!r}; choose one of {', '.join(SEGMENTERS)}")
