"""The pruning schemes as one function with a branch per scheme: the reference the scheme
objects of :mod:`fairseq_efficiency.pruning.schemes` must reproduce mask for mask.

A frozen copy of the implementation that wrote the masks of existing pruned checkpoints
(ratio/cap validation left to the code under test).
"""
from collections import OrderedDict

import torch


def lamp_scores(w):
    sq = w.detach().reshape(-1).double() ** 2
    srt, idx = torch.sort(sq)
    suffix = torch.flip(torch.cumsum(torch.flip(srt, [0]), 0), [0])
    score_sorted = torch.where(suffix > 0, srt / suffix.clamp_min(1e-300), torch.zeros_like(srt))
    out = torch.empty_like(score_sorted)
    out[idx] = score_sorted
    return out.float().reshape(w.shape)


def _kth(scores, k):
    return float(torch.kthvalue(scores.float().cpu(), k).values)


def _flat_abs(tensors, prev):
    out = []
    for n, t in tensors.items():
        a = t.detach().abs().reshape(-1).float()
        if prev is not None and n in prev:
            a = a.masked_fill(~prev[n].reshape(-1).to(a.device), 0.0)
        out.append(a)
    return out


def _global_select(scores, k, caps):
    free = list(scores)
    capped = []
    while True:
        k_free = k - sum(caps[c] for c in capped) if caps else k
        pool = [s for c in free for s in scores[c].values()]
        n_free = sum(s.numel() for s in pool)
        thr = _kth(torch.cat(pool), min(k_free, n_free)) if pool and k_free > 0 else -1.0
        over = [c for c in free if caps and
                sum(int((s <= thr).sum()) for s in scores[c].values()) > caps[c]]
        if not over:
            break
        capped += over
        free = [c for c in free if c not in over]
    pruned, thresholds = {}, {}
    for c in free:
        thresholds[c] = thr
        for n, s in scores[c].items():
            pruned[n] = s <= thr
    for c in capped:
        names = list(scores[c])
        flat = torch.cat([scores[c][n] for n in names])
        out = torch.zeros(flat.numel(), dtype=torch.bool)
        if caps[c] > 0:
            lowest = torch.topk(flat.float().cpu(), caps[c], largest=False)
            out[lowest.indices] = True
            thresholds[c] = float(lowest.values.max())
        else:
            thresholds[c] = -1.0
        for n, piece in zip(names, torch.split(out, [scores[c][n].numel() for n in names])):
            pruned[n] = piece.to(scores[c][n].device)
    return pruned, thresholds, tuple(capped)


def compute_masks(classes, scheme, ratio, prev=None, max_class_ratio=1.0):
    """``(masks, thresholds, capped)``."""
    masks, thresholds, capped = OrderedDict(), {}, ()
    mags = {c: dict(zip(ts.keys(), _flat_abs(ts, prev))) for c, ts in classes.items()}
    total = sum(a.numel() for d in mags.values() for a in d.values())
    shapes = {n: t.shape for ts in classes.values() for n, t in ts.items()}
    if scheme == "class-uniform":
        for c, d in mags.items():
            n_c = sum(a.numel() for a in d.values())
            k = int(round(ratio * n_c))
            thr = _kth(torch.cat(list(d.values())), k) if k > 0 else -1.0
            thresholds[c] = max(thr, 0.0)
            for n, a in d.items():
                masks[n] = (a > thr).reshape(shapes[n])
    else:
        scores, sigma = {}, {c: 1.0 for c in classes}
        for c, d in mags.items():
            if scheme == "class-distribution":
                flat = torch.cat([t.detach().reshape(-1).float() for t in classes[c].values()])
                alive = torch.cat([a > 0 for a in d.values()]) if prev is not None else None
                vals = flat[alive] if alive is not None and alive.any() else flat
                sigma[c] = float(vals.std(correction=0)) if vals.numel() > 1 else 0.0
                inv = 1.0 / sigma[c] if sigma[c] > 0 else 0.0
                scores[c] = {n: a * inv for n, a in d.items()}
            elif scheme == "lamp":
                scores[c] = {n: lamp_scores(a) for n, a in d.items()}
            else:
                scores[c] = dict(d)
        k = int(round(ratio * total))
        caps = None
        if max_class_ratio < 1.0:
            caps = {c: int(max_class_ratio * sum(a.numel() for a in d.values()))
                    for c, d in mags.items()}
        pruned, thr, capped = _global_select(scores, k, caps)
        for c, d in scores.items():
            for n, s in d.items():
                keep = ~pruned[n]
                if scheme == "lamp" and s.numel() and not keep.any() and bool(mags[c][n].any()):
                    keep[int(torch.argmax(s))] = True
                masks[n] = keep.reshape(shapes[n])
            if scheme == "lamp":
                cut = [mags[c][n][pruned[n].reshape(-1)] for n in d]
                cut = torch.cat(cut) if cut else torch.zeros(0)
                thresholds[c] = float(cut.max()) if cut.numel() else 0.0
            else:
                thresholds[c] = max(thr[c], 0.0) * sigma[c]
    if prev is not None:
        for n in masks:
            if n in prev:
                masks[n] &= prev[n].to(masks[n].device)
    for ts in classes.values():
        for n, t in ts.items():
            masks[n] = masks[n].to(t.device)
    return masks, thresholds, capped
