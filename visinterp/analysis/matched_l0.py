"""Comparing sweeps at matched sparsity: interpolate a sweep's curve in log-log space, read
off the L0 another sweep needs for the same FVU, score the contextual SAE's goal (fewer
innovations than per-position TopK at equal FVU, delta CE or image quality no worse, control
loses the gain) and say it in one sentence, and pick the pair of SAEs a report analyses side by
side."""

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


def middle_contextual(saes: dict[str, dict], contextual_series: str) -> str | None:
    """The SAE of `contextual_series` at its middle budget (None when the sweep has none)."""
    ctx = sorted((m["k"], n) for n, m in saes.items() if m["series"] == contextual_series)
    return ctx[len(ctx) // 2][1] if ctx else None


def analysed_pair(saes: dict[str, dict], contextual_series: str) -> tuple[str, str] | None:
    """(the per-position SAE nearest in FVU, the SAE of `contextual_series` at its middle budget),
    or None when the sweep lacks either (a sweep of TopK SAEs alone)."""
    name = middle_contextual(saes, contextual_series)
    per_position = [n for n, m in saes.items() if m["family"] == "per-position"]
    if name is None or not per_position:
        return None
    target = max(saes[name]["fvu"], 1e-9)
    per_pos = min((abs(math.log(max(saes[n]["fvu"], 1e-9) / target)), n) for n in per_position)[1]
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


MIN_RATIO = 1.5  # the goal: at least 1.5x fewer innovations than the reference at equal FVU
CONTROL_KEEPS = 0.2  # ... while the shuffled control keeps under 20% of the gain (loses at least 80%)


def goals(saes: dict[str, dict], reference: str = "topk", min_ratio: float = MIN_RATIO,
          control_keeps: float = CONTROL_KEEPS, quality: str = "delta_ce", higher_is_better: bool = False) -> dict:
    """Per contextual SAE: the reference sweep's L0 at the contextual SAE's FVU over its own L0
    (innovation ratio, goal >= min_ratio), the reference's `quality` at that L0 beside the
    contextual one (goal: no worse; delta CE for an LLM, lower is better; the PSNR of the decoded
    image for an image map, `higher_is_better`), and the same ratio for its shuffled control,
    which must keep less than `control_keeps` of log(ratio)."""
    ref_fvu, ref_q = series_points(saes, reference, "fvu"), series_points(saes, reference, quality)
    ref_unconverged = sorted(n for n, m in saes.items() if m["series"] == reference and m.get("converged") is False)
    lo, hi = (min(p[1] for p in ref_fvu), max(p[1] for p in ref_fvu)) if ref_fvu else (0.0, 0.0)
    out = {}
    for name, m in saes.items():
        if m["family"] != "contextual" or len(ref_fvu) < 2:
            continue
        need = l0_for_value(ref_fvu, m["fvu"], extrapolate=True)
        ratio = need / m["l0"]
        ref_at = value_at_l0(ref_q, need)
        row = {"l0": m["l0"], "fvu": m["fvu"], f"{reference}_l0_at_same_fvu": need, "innovation_ratio": ratio,
               "extrapolated": not lo <= m["fvu"] <= hi, quality: m[quality],
               f"{reference}_{quality}_at_that_l0": ref_at, "carried": carried(m),
               "converged": m.get("converged"), f"{reference}_not_converged": ref_unconverged}
        control = saes.get(f"{name}_control")
        kept = None
        if control is not None:
            c_ratio = l0_for_value(ref_fvu, control["fvu"], extrapolate=True) / control["l0"]
            kept = math.log(c_ratio) / math.log(ratio) if ratio > 1 else None
            row |= {"control_l0": control["l0"], "control_fvu": control["fvu"], "control_innovation_ratio": c_ratio,
                    "control_extrapolated": not lo <= control["fvu"] <= hi, "control_keeps_fraction_of_gain": kept}
        no_worse = ref_at is not None and (m[quality] >= ref_at if higher_is_better else m[quality] <= ref_at)
        row["goal_met"] = bool(ratio >= min_ratio and not row["extrapolated"] and no_worse
                               and kept is not None and kept < control_keeps and row["carried"])
        out[name] = row
    return out


def verdict(goals: dict, quality: str = "delta CE") -> str:
    """One plain sentence on the goal, with the numbers (`quality`: what `goals` compared beside
    the FVU, as the sentence names it)."""
    if not goals:
        return "No contextual SAE was trained, or too few per-position TopK SAEs to compare against."
    if not any(g.get("carried", True) for g in goals.values()):
        return ("No verdict: no contextual SAE carried anything on the held-out windows (state L0 = L0), so each "
                "was a per-position SAE there; train longer so that the carry learns to persist.")
    met = [n for n, g in goals.items() if g["goal_met"]]
    best = max(goals, key=lambda n: goals[n]["innovation_ratio"])
    g = goals[best]
    line = (f"best innovation ratio: {best}, {g['innovation_ratio']:.2f}x "
            f"(TopK needs L0 {g['topk_l0_at_same_fvu']:.2f} for its FVU {g['fvu']:.3f} at L0 {g['l0']:.2f}"
            f"{', extrapolated beyond the TopK sweep' if g['extrapolated'] else ''})")
    unconverged = [n for n, row in goals.items() if row.get("converged") is False]
    unconverged += g.get("topk_not_converged", [])  # the reference sweep's, the same in every row
    caveat = (f" Not converged (held-out FVU still moving by 2% or more over the last quarter): "
              f"{', '.join(unconverged)}; the verdict is provisional." if unconverged else "")
    if met:
        return f"Goal met by {', '.join(met)}; {line}.{caveat}"
    return (f"Goal NOT met: no contextual SAE reaches per-position TopK's FVU with >= {MIN_RATIO}x fewer innovations, "
            f"{quality} no worse and a control that loses at least {1 - CONTROL_KEEPS:.0%} of the gain. The "
            f"{line}.{caveat}")
