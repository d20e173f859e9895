"""A stand-in for co-tracker's ``hubconf.py`` (the code is not on PyPI and cannot be fetched here).

``cotracker3_offline(pretrained=False)`` returns a predictor with CoTracker3's calling convention
(video ``(B, T, 3, H, W)`` in [0, 255], queries ``(B, N, 3)`` rows ``[t, x, y]``, returns tracks
``(B, T, N, 2)`` and visibility ``(B, T, N)``) and a ``.model`` whose random weights load from a
checkpoint. It is a real, if tiny, tracker: each step moves every query by what a small network
reads from the features of two frames at the point, plus a share of the mean move of all queries
(points are tracked jointly, as CoTracker3 does, so a query added to the call moves the others).
"""

import torch
import torch.nn.functional as F


class _Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.feat = torch.nn.Conv2d(3, 8, 5, padding=2)
        self.step = torch.nn.Linear(16, 2)
        self.vis = torch.nn.Linear(8, 1)


def _sample(f, pts):
    """Bilinear features (B, N, C) of ``f`` (B, C, H, W) at pixel points ``pts`` (B, N, 2)."""
    h, w = f.shape[-2:]
    g = torch.stack([pts[..., 0] / (w - 1) * 2 - 1, pts[..., 1] / (h - 1) * 2 - 1], -1)[:, :, None]
    return F.grid_sample(f, g, align_corners=True)[..., 0].transpose(1, 2)


class _Predictor(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.model = _Net()

    def forward(self, video, queries=None, backward_tracking=False):
        net = self.model
        pts = queries[..., 1:].float()
        tracks, vis = [pts], [torch.ones(pts.shape[:2], dtype=torch.bool, device=pts.device)]
        prev = _sample(net.feat(video[:, 0] / 255.0), pts)
        for t in range(1, video.shape[1]):
            cur = _sample(net.feat(video[:, t] / 255.0), pts)
            d = torch.tanh(net.step(torch.cat([prev, cur], -1))) * 1.5
            pts = pts + d + 0.25 * d.mean(dim=1, keepdim=True)
            prev = _sample(net.feat(video[:, t] / 255.0), pts)
            tracks.append(pts)
            vis.append(net.vis(prev)[..., 0] > 0)
        return torch.stack(tracks, 1), torch.stack(vis, 1)


def cotracker3_offline(*, pretrained=True, **kwargs):
    assert not pretrained, "vid2pair must not let hubconf download weights"
    return _Predictor()
