"""Factor alignment: how well the best single SAE feature picks out a known factor.

For a binary factor, a feature's AUROC is the probability that it is larger at a random
position where the factor holds than at one where it does not (ties count half: the
Mann-Whitney U statistic over n_pos * n_neg). A categorical factor is scored one value
against the rest. For a continuous factor, the score is Pearson's correlation. A feature
that aligns with no factor above a threshold is "unnamed". `probe_table` gives the ceiling
that any linear read-out of the layer itself reaches, scored the same way: a factor that a
probe finds but no single feature does is spread over features, not absent."""

from __future__ import annotations

import torch
from torch import Tensor


_BLOCK_ELEMENTS = 1 << 22  # scores ranked at a time (N x columns), bounding the memory of a call


def tie_ranks(scores: Tensor) -> Tensor:
    """1-based ranks of each column of scores (N, F), tied values given their mean rank: (N, F)
    float64."""
    n = scores.shape[0]
    values, order = torch.sort(scores, dim=0)
    differs = values[1:] != values[:-1]
    edge = torch.ones(1, scores.shape[1], dtype=torch.bool)
    starts, ends = torch.cat([edge, differs]), torch.cat([differs, edge])
    index = torch.arange(n)[:, None].expand_as(values)
    first = torch.where(starts, index, 0).cummax(0).values
    last = torch.where(ends, index, n).flip(0).cummin(0).values.flip(0)
    return torch.empty(values.shape, dtype=torch.float64).scatter_(0, order, (first + last).double() / 2 + 1)


def auroc(scores: Tensor, labels: Tensor) -> Tensor:
    """AUROC of each column of scores (N, F) for boolean labels (N,): (F,), ties counted half;
    for several label columns (N, L) at once: (L, F), each column of scores ranked once.

    AUROC = (sum of the positives' ranks - n_pos (n_pos + 1) / 2) / (n_pos n_neg), with tied
    scores given their average rank. NaN for a label column that is all one class."""
    if scores.dim() == 1:
        return auroc(scores[:, None], labels)[..., 0]
    if labels.dim() == 1:
        return auroc(scores, labels[:, None])[0]
    positive = labels.bool().double()
    n_pos = positive.sum(0)
    n_neg = labels.shape[0] - n_pos
    block = max(1, _BLOCK_ELEMENTS // max(1, scores.shape[0]))
    rank_sums = torch.cat([positive.T @ tie_ranks(scores[:, i:i + block]) for i in range(0, scores.shape[1], block)], 1)
    out = (rank_sums - (n_pos * (n_pos + 1) / 2)[:, None]) / (n_pos * n_neg)[:, None]
    return out.masked_fill(((n_pos == 0) | (n_neg == 0))[:, None], float("nan")).float()


def correlation(scores: Tensor, values: Tensor) -> Tensor:
    """Pearson correlation (F,) of each column of scores (N, F) with values (N,); 0 for a
    constant column."""
    s = scores.double() - scores.double().mean(0)
    v = values.double() - values.double().mean()
    denom = s.norm(dim=0) * v.norm()
    return torch.where(denom > 0, (s * v[:, None]).sum(0) / denom.clamp(min=1e-300), torch.zeros_like(denom)).float()


def _value_masks(name: str, lab: Tensor, v: int, within_labelled: tuple[str, ...]) -> tuple[Tensor, Tensor]:
    """(keep, positive) for scoring value v of factor `name` one-vs-rest (see alignment_table)."""
    keep = lab >= 0 if name in within_labelled and v >= 0 else torch.ones_like(lab, dtype=torch.bool)
    return keep, lab[keep] == v


def _label(name: str, v: int, names: dict[str, tuple[str, ...]]) -> str:
    return names[name][v] if name in names and 0 <= v < len(names[name]) else str(v)


def alignment_table(codes: Tensor, factors: dict[str, Tensor], continuous: tuple[str, ...] = (),
                    names: dict[str, tuple[str, ...]] | None = None, min_count: int = 20,
                    within_labelled: tuple[str, ...] = ()) -> dict:
    """For every factor value (one-vs-rest; values with fewer than min_count positives or
    negatives are skipped) the best feature and its AUROC, and for continuous factors the best
    |correlation|. For factors in `within_labelled`, a value >= 0 is scored against the other
    values >= 0 only (positions labelled -1, e.g. empty space, left out), so a feature that
    merely marks labelled positions does not win, and -1 itself gets no row (labelled against
    unlabelled is a factor of its own, such as the scenes' background). Returns {factor: {value: {"feature",
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
        scored, keep = [], None  # every value of a factor is scored over the same positions
        for v in lab.unique().tolist():
            if name in within_labelled and v < 0:
                continue
            keep, positive = _value_masks(name, lab, v, within_labelled)
            if min(int(positive.sum()), int((~positive).sum())) >= min_count:
                scored.append((v, positive))
        if not scored:
            continue
        by_value = auroc(codes[keep], torch.stack([positive for _, positive in scored], 1))
        for (v, _), a in zip(scored, by_value):
            f = int(torch.nan_to_num(a, nan=0.0).argmax())
            table[name][_label(name, v, names)] = {"feature": f, "auroc": float(a[f])}
            best = torch.maximum(best, torch.nan_to_num(a, nan=0.5))
    return {"factors": table, "best_by_feature": best}


class _Ridge:
    """Least squares Y ~ standardised x (N, D) plus a bias, with `ridge` x N on the diagonal;
    several target columns in one solve."""

    def __init__(self, x: Tensor, Y: Tensor, ridge: float):
        self.mean, self.scale = x.mean(0), x.std(0).clamp_min(1e-8)
        z = self._design(x)
        gram = z.T @ z + ridge * x.shape[0] * torch.eye(z.shape[1], dtype=x.dtype)
        self.w = torch.linalg.solve(gram, z.T @ Y)

    def _design(self, x: Tensor) -> Tensor:
        return torch.cat([(x - self.mean) / self.scale, torch.ones(x.shape[0], 1, dtype=x.dtype)], 1)

    def predict(self, x: Tensor) -> Tensor:
        return self._design(x) @ self.w


def probe_table(train_x: Tensor, train_factors: dict[str, Tensor], held_x: Tensor, held_factors: dict[str, Tensor],
                continuous: tuple[str, ...] = (), names: dict[str, tuple[str, ...]] | None = None,
                min_count: int = 20, within_labelled: tuple[str, ...] = (), ridge: float = 1e-4) -> dict:
    """The linear ceiling for `alignment_table`: per factor value, a ridge-regression probe on
    the layer's activations train_x (N, D) to the one-vs-rest label (+-1), scored by AUROC on
    held_x with the same value masks (continuous factors: the held-out correlation of a probe
    to the values). Values scored over the same positions share one solve. {factor: {value:
    {"auroc"}}}, or {factor: {"correlation"}}."""
    names = names or {}
    x, hx = train_x.double(), held_x.double()
    table: dict = {}
    for name, lab in held_factors.items():
        train_lab = train_factors[name]
        if name in continuous:
            fit = _Ridge(x, train_lab.double()[:, None], ridge)
            table[name] = {"correlation": float(correlation(fit.predict(hx), lab)[0])}
            continue
        groups: dict[bool, list] = {}  # within the labelled positions or not -> scored values
        for v in lab.unique().tolist():
            if name in within_labelled and v < 0:
                continue
            keep, positive = _value_masks(name, lab, v, within_labelled)
            train_keep, train_positive = _value_masks(name, train_lab, v, within_labelled)
            if min(int(positive.sum()), int((~positive).sum()), int(train_positive.sum()),
                   int((~train_positive).sum())) >= min_count:
                groups.setdefault(bool(name in within_labelled and v >= 0), []).append(
                    (v, keep, positive, train_keep, train_positive))
        scored = {}
        for members in groups.values():
            _, keep, _, train_keep, _ = members[0]
            targets = torch.stack([m[4] for m in members], 1).double() * 2 - 1
            scores = _Ridge(x[train_keep], targets, ridge).predict(hx[keep])
            for j, (v, _, positive, _, _) in enumerate(members):
                scored[v] = {"auroc": float(auroc(scores[:, j], positive))}
        table[name] = {_label(name, v, names): scored[v] for v in sorted(scored)}
    return table


def unnamed_features(best_by_feature: Tensor, codes: Tensor, threshold: float = 0.75, min_rate: float = 1e-3) -> list[int]:
    """Live features (active at >= min_rate of positions) whose best alignment with any known
    factor stays below `threshold`, most active first."""
    rate = (codes > 0).float().mean(0)
    idx = ((best_by_feature < threshold) & (rate >= min_rate)).nonzero()[:, 0]
    return idx[rate[idx].argsort(descending=True)].tolist()
