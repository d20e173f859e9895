"""FramePainter's matching-attention supervision from target->source tracks.

FramePainter trains its matching attention with ``L_match = || M * (A_match - C) ||^2`` where
``A_match`` is the attention of TARGET (edited-image) tokens over SOURCE tokens. From the
tracks ``[x_tgt, y_tgt, x_src, y_src]`` stored by :mod:`stages.track`:

* the token grid ``(h_t, w_t)`` tiles the stored image (``W x H``): token ``(r, c)`` covers
  ``x + 0.5 in [c * W / w_t, (c + 1) * W / w_t)`` and ``y + 0.5 in [r * H / h_t, (r + 1) * H / h_t)``
  (pixel centres at integers), so its centre is ``((c + 0.5) * W / w_t - 0.5, (r + 0.5) * H / h_t - 0.5)``;
* tokens are flattened row-major: index ``r * w_t + c``;
* ``C`` is ``(h_t * w_t, h_t * w_t)``: ROW ``i`` = target token, COLUMN ``j`` = source token;
  ``C[i, j] = 1`` for the one source token containing the source position of target token
  ``i``'s point (one-hot, nearest token = the token whose cell contains the point);
* ``M`` is ``(h_t * w_t,)``: 1 where target token ``i`` has a visible track whose source position
  lies inside the image, else 0, and then row ``i`` of ``C`` is all zero.

Several tracks in one target token (a coarser grid than the tracks'): the token's centre moves by
the mean displacement ``src - tgt`` of its VALID tracks (visible, landing inside), and ``C`` points
at the source token that contains the moved centre. Taking one track's source position instead
would be off by that track's offset from the centre (up to half a track spacing): with the tracks
at 8-px spacing, at 36x64 tokens four tracks tie and 15-70 % of the moving rows pointed at a
neighbouring source token. Storing ``C`` is wasteful (9216^2 floats at 72x128 tokens): store the
tracks and rebuild ``C`` with :func:`correspondence` (or the compact
:func:`correspondence_index`) at training time, for whichever attention resolution is trained.
"""

from __future__ import annotations

import numpy as np

__all__ = ["correspondence_index", "correspondence", "token_centres"]


def token_centres(image_size: tuple[int, int], token_grid: tuple[int, int]) -> np.ndarray:
    """(h_t * w_t, 2) float32 ``(x, y)`` token centres in pixel coordinates, row-major."""
    w, h = int(image_size[0]), int(image_size[1])
    ht, wt = int(token_grid[0]), int(token_grid[1])
    xs = (np.arange(wt) + 0.5) * (w / wt) - 0.5
    ys = (np.arange(ht) + 0.5) * (h / ht) - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)


def _token_of(
    x: np.ndarray, y: np.ndarray, w: int, h: int, wt: int, ht: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    c = np.floor((x + 0.5) * (wt / w)).astype(np.int64)
    r = np.floor((y + 0.5) * (ht / h)).astype(np.int64)
    inside = (c >= 0) & (c < wt) & (r >= 0) & (r < ht)
    return r, c, inside


def correspondence_index(
    tracks: np.ndarray, visibility: np.ndarray, image_size: tuple[int, int], token_grid: tuple[int, int]
) -> np.ndarray:
    """(h_t * w_t,) int64: the source token of each target token, -1 where ``M`` is 0."""
    w, h = int(image_size[0]), int(image_size[1])
    ht, wt = int(token_grid[0]), int(token_grid[1])
    if w < 1 or h < 1 or ht < 1 or wt < 1:
        raise ValueError(f"bad image_size {image_size} / token_grid {token_grid}")
    tr = np.asarray(tracks, np.float64).reshape(-1, 4)
    vis = np.asarray(visibility).reshape(-1).astype(bool)
    if len(vis) != len(tr):
        raise ValueError(f"{len(tr)} tracks but {len(vis)} visibility flags")
    idx = np.full(ht * wt, -1, np.int64)
    finite = np.isfinite(tr).all(axis=1)
    tr = np.where(finite[:, None], tr, -1e9)
    rt, ct, in_t = _token_of(tr[:, 0], tr[:, 1], w, h, wt, ht)
    _, _, in_s = _token_of(tr[:, 2], tr[:, 3], w, h, wt, ht)
    ok = vis & finite & in_t & in_s
    if not ok.any():
        return idx
    ti = (rt * wt + ct)[ok]
    n_tok = ht * wt
    count = np.bincount(ti, minlength=n_tok)
    dx = np.bincount(ti, weights=tr[ok, 2] - tr[ok, 0], minlength=n_tok)
    dy = np.bincount(ti, weights=tr[ok, 3] - tr[ok, 1], minlength=n_tok)
    has = count > 0
    centres = token_centres((w, h), (ht, wt)).astype(np.float64)
    sx = centres[:, 0] + np.where(has, dx / np.maximum(count, 1), 0.0)
    sy = centres[:, 1] + np.where(has, dy / np.maximum(count, 1), 0.0)
    rs, cs, in_s = _token_of(sx, sy, w, h, wt, ht)
    good = has & in_s
    idx[good] = (rs * wt + cs)[good]
    return idx


def correspondence(
    tracks: np.ndarray, visibility: np.ndarray, image_size: tuple[int, int], token_grid: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """``(C, M)``: C (h_t*w_t, h_t*w_t) float32 one-hot rows (target token -> source token), M (h_t*w_t,)."""
    idx = correspondence_index(tracks, visibility, image_size, token_grid)
    n = len(idx)
    c = np.zeros((n, n), np.float32)
    rows = np.flatnonzero(idx >= 0)
    c[rows, idx[rows]] = 1.0
    m = (idx >= 0).astype(np.float32)
    return c, m
