"""Factor alignment: how well the best single SAE feature picks out a known factor.

For a binary factor, a feature's AUROC is the probability that it is larger at a random
position where the factor holds than at one where it does not (ties count half: the
Mann-Whitney U statistic over n_pos * n_neg). A categorical factor is scored one value
against the rest. For a continuous factor, the score is Pearson's correlation. A feature
that aligns with no factor above a threshold is "unnamed"."""

from __future__ import annotations

import torch
from torch import Tensor


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of each column of scores (N, F) for boolean labels (N,): (F,), ties counted half.

    AUROC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied
    scores given their average rank. NaN when labels are all one class."""
    if scores.dim() == 1:
        return auroc(scores[:, None], labels)[0]
    labels = labels.bool()
    n_pos = int(labels.sum())
    n_neg = labels.numel() - n_pos
    if n_pos == 0 or n_neg == 0:
        return torch.full((scores.shape[1],), float("nan"))
    out = torch.empty(scores.shape[1], dtype=torch.float64)
    for f in range(scores.shape[1]):
        values, order = torch.sort(scores[:, f])
        _, inverse, counts = torch.unique_consecutive(values, return_inverse=True, return_counts=True)
        ends = torch.cumsum(counts, 0).double()  # 1-based rank of each tie group's last member
        mean_rank = ends - (counts.double() - 1) / 2
        rank_sum = mean_rank[inverse][labels[order]].sum()
        out[f] = (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    return out.float()


def correlation(scores: Tensor, values: Tensor) -> Tensor:
    """Pearson correlation (F,) of each column of scores (N, F) with values (N,); 0 for a
    constant column."""
    s = scores.double() - scores.double().mean(0)
    v = values.double() - values.double().mean()
    denom = s.norm(dim=0) * v.norm()
    return torch.where(denom > 0, (s * v[:, None]).sum(0) / denom.clamp(min=1e-300), torch.zeros_like(denom)).float()


def alignment_table(codes: Tensor, factors: dict[str, Tensor], continuous: tuple[str, ...] = (),
                    names: dict[str, tuple[str, ...]] | None = None, min_count: int = 20,
                    within_labelled: tuple[str, ...] = ()) -> dict:
    """For every factor value (one-vs-rest; values with fewer than min_count positives or
    negatives are skipped) the best feature and its AUROC, and for continuous factors the best
    |correlation|. For factors in `within_labelled`, a value >= 0 is scored against the other
    values >= 0 only (positions labelled -1, e.g. empty space, left out), so a feature that
    merely marks labelled positions does not win. Returns {factor: {value: {"feature",
    "auroc"}}} and per feature its best score over all factors in "best_by_feature" (F,)."""
    names = names or {}
    table: dict = {}
    best = torch.full((codes.shape[1],), 0.5)
    for name, lab in factors.items():
        if name in continuous:
            r = correlation(codes, lab)
            f = int(r.abs().argmax())
            table[name] = {"feature": f, "correlation": float(r[f])}
            best = torch.maximum(best, 0.5 + r.abs() / 2)  # |r| = 1 ranks with AUROC 1
            continue
        table[name] = {}
        for v in lab.unique().tolist():
            keep = lab >= 0 if name in within_labelled and v >= 0 else torch.ones_like(lab, dtype=torch.bool)
            positive = lab[keep] == v
            if min(int(positive.sum()), int((~positive).sum())) < min_count:
                continue
            a = auroc(codes[keep], positive)
            f = int(torch.nan_to_num(a, nan=0.0).argmax())
            label = names[name][v] if name in names and 0 <= v < len(names[name]) else str(v)
            table[name][label] = {"feature": f, "auroc": float(a[f])}
            best = torch.maximum(best, torch.nan_to_num(a, nan=0.5))
    return {"factors": table, "best_by_feature": best}


def unnamed_features(best_by_feature: Tensor, codes: Tensor, threshold: float = 0.75, min_rate: float = 1e-3) -> list[int]:
    """Live features (active at >= min_rate of positions) whose best alignment with any known
    factor stays below `threshold`, most active first."""
    rate = (codes > 0).float().mean(0)
    idx = ((best_by_feature < threshold) & (rate >= min_rate)).nonzero()[:, 0]
    return idx[rate[idx].argsort(descending=True)].tolist()
