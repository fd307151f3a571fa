"""The shared report pieces: Pareto panels whose log axes carry readable labels and whose legend
sits outside the data, convergence cells that say which way a run moved, and tables."""

import math

from scenes.figures import pyplot
from visinterp.report.page import converged_cell, pareto_panel, table


def _saes():
    rows = {}
    for k, fvu in ((2, 0.31), (4, 0.2), (8, 0.12)):
        rows[f"topk_k{k}"] = {"series": "topk", "l0": float(k), "state_l0": float(k), "fvu": fvu}
    for k, fvu in ((1, 0.3), (2, 0.22)):
        rows[f"contextual_gated_k{k}"] = {"series": "contextual_gated", "l0": k * 0.95, "state_l0": 3.0 * k, "fvu": fvu}
    return rows


def test_pareto_panel_labels_its_log_axes_and_keeps_the_legend_off_the_data():
    fig, ax = pyplot().subplots(figsize=(4, 3))
    pareto_panel(ax, _saes(), "fvu", "held-out FVU", "L0")
    fig.canvas.draw()
    lo, hi = ax.get_xlim()
    x_labels = {t.get_text() for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi}
    assert {"1", "2", "5"} <= x_labels  # matplotlib's default would show at most "10^0"
    lo, hi = ax.get_ylim()  # FVU 0.12-0.31, under half a decade: 1-2-3-5-7 steps, not 11 linear ticks
    y_labels = {t.get_text() for t in ax.get_yticklabels() if lo <= t.get_position()[1] <= hi}
    assert y_labels == {"0.2", "0.3"}
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # right of the axes, not over the points
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "topk", "contextual gated", "contextual gated, state L0"]
    pyplot().close(fig)


def test_converged_cells_say_which_way_the_run_moved():
    assert converged_cell({"converged": True, "fvu_gain_last_quarter": 0.01}) == "yes"
    assert converged_cell({"converged": False, "fvu_gain_last_quarter": 0.06}) == "no (improved 6% in the last quarter)"
    assert converged_cell({"converged": False, "fvu_gain_last_quarter": -1.55}) == "no (rose 155% in the last quarter)"
    assert converged_cell({}) == "-"


def test_tables_escape_text_and_show_nan_as_a_dash():
    html = table([["<b>", math.nan, 0.123456]], ["name", "x", "y"])
    assert "&lt;b&gt;" in html and "<td>-</td>" in html and "<td>0.1235</td>" in html
