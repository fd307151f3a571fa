"""Comparing sweeps at matched sparsity: interpolate a sweep's curve in log-log space, read
off the L0 another sweep needs for the same FVU, and score the contextual SAE's goal (fewer
innovations than per-position TopK at equal FVU, delta CE no worse, control loses the gain);
and pick the pair of SAEs a report analyses side by side."""

from __future__ import annotations

import math

Point = tuple[float, float]  # (L0, value)


def _interp(xs: list[float], ys: list[float], x: float, extrapolate: bool = False, log_y: bool = True) -> float | None:
    """Piecewise-linear interpolation in log x and (with log_y) log y. Outside [min xs, max xs]:
    None, or with `extrapolate` the nearest segment's line extended."""
    pts = sorted(zip(xs, ys))
    if len(pts) == 1:
        return pts[0][1] if pts[0][0] == x else None
    inside = pts[0][0] <= x <= pts[-1][0]
    if not inside and not extrapolate:
        return None
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x <= x1 or (x1, y1) == pts[-1]:
            if x1 == x0:
                return y0
            t = (math.log(x) - math.log(x0)) / (math.log(x1) - math.log(x0))
            if not log_y:
                return y0 + t * (y1 - y0)
            return math.exp(math.log(y0) + t * (math.log(y1) - math.log(y0)))
    return None


def value_at_l0(points: list[Point], l0: float) -> float | None:
    """The sweep's value at `l0` (log-log when every value is positive, as FVU is; linear in
    the value against log L0 otherwise, as for a delta CE that can go negative), or None outside
    its range."""
    if not points:
        return None
    return _interp([p[0] for p in points], [p[1] for p in points], l0, log_y=min(p[1] for p in points) > 0)


def l0_for_value(points: list[Point], value: float, extrapolate: bool = False) -> float | None:
    """The L0 at which a sweep whose value falls with L0 reaches `value`; None outside its
    range unless `extrapolate`."""
    return _interp([p[1] for p in points], [p[0] for p in points], value, extrapolate)


def analysed_pair(saes: dict[str, dict], contextual_series: str) -> tuple[str, str]:
    """(the per-position SAE nearest in FVU, the SAE of `contextual_series` at its middle budget)."""
    ctx = sorted((m["k"], n) for n, m in saes.items() if m["series"] == contextual_series)
    name = ctx[len(ctx) // 2][1]
    target = max(saes[name]["fvu"], 1e-9)
    per_pos = min((abs(math.log(max(m["fvu"], 1e-9) / target)), n) for n, m in saes.items()
                  if m["family"] == "per-position")[1]
    return per_pos, name


def series_points(saes: dict[str, dict], series: str, y: str) -> list[Point]:
    """The (L0, value) points of one sweep series, in L0 order."""
    return sorted((m["l0"], m[y]) for m in saes.values() if m["series"] == series)


def matched_table(saes: dict[str, dict], l0s: list[float], ys: tuple[str, ...] = ("fvu", "delta_ce")) -> list[dict]:
    """Per target L0, every series' values there (None where the series does not reach it)."""
    all_series = list(dict.fromkeys(m["series"] for m in saes.values()))
    return [{"l0": l0, **{f"{s}/{y}": value_at_l0(series_points(saes, s, y), l0) for s in all_series for y in ys}}
            for l0 in l0s]


def carried(sae: dict) -> bool:
    """Whether a contextual SAE carried anything on the held-out windows: its state holds more
    than its innovations (state L0 > L0). One that did not is a per-position SAE there, and no
    verdict about context can come from it."""
    return sae["state_l0"] > sae["l0"] * (1 + 1e-3)


def goals(saes: dict[str, dict], reference: str = "topk", min_ratio: float = 1.5, control_keeps: float = 0.5) -> dict:
    """Per contextual SAE: the reference sweep's L0 at the contextual SAE's FVU over its own L0
    (innovation ratio, goal >= min_ratio), the reference's delta CE at that L0 beside the
    contextual one (goal: no worse), and the same ratio for its shuffled control; the control
    "loses most of the gain" when it keeps less than `control_keeps` of log(ratio)."""
    ref_fvu, ref_ce = series_points(saes, reference, "fvu"), series_points(saes, reference, "delta_ce")
    lo, hi = (min(p[1] for p in ref_fvu), max(p[1] for p in ref_fvu)) if ref_fvu else (0.0, 0.0)
    out = {}
    for name, m in saes.items():
        if m["family"] != "contextual" or len(ref_fvu) < 2:
            continue
        need = l0_for_value(ref_fvu, m["fvu"], extrapolate=True)
        ratio = need / m["l0"]
        ref_dce = value_at_l0(ref_ce, need)
        row = {"l0": m["l0"], "fvu": m["fvu"], f"{reference}_l0_at_same_fvu": need, "innovation_ratio": ratio,
               "extrapolated": not lo <= m["fvu"] <= hi, "delta_ce": m["delta_ce"],
               f"{reference}_delta_ce_at_that_l0": ref_dce, "carried": carried(m),
               "converged": m.get("converged")}
        control = saes.get(f"{name}_control")
        kept = None
        if control is not None:
            c_ratio = l0_for_value(ref_fvu, control["fvu"], extrapolate=True) / control["l0"]
            kept = math.log(c_ratio) / math.log(ratio) if ratio > 1 else None
            row |= {"control_l0": control["l0"], "control_fvu": control["fvu"], "control_innovation_ratio": c_ratio,
                    "control_extrapolated": not lo <= control["fvu"] <= hi, "control_keeps_fraction_of_gain": kept}
        row["goal_met"] = bool(ratio >= min_ratio and not row["extrapolated"] and ref_dce is not None
                               and m["delta_ce"] <= ref_dce and kept is not None and kept < control_keeps
                               and row["carried"])
        out[name] = row
    return out
