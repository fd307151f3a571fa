"""The documents stay true: the generated ones (CLI and config references, the results page,
the README's headline block) match what docs/generate.py writes from the code and the result
files, every relative link resolves, and the README stays a short user's page."""

import importlib.util
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", ROOT / "docs" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_documents_are_current():
    stale = [str(path.relative_to(ROOT)) for path, text in _generator().outputs().items()
             if not path.is_file() or path.read_text() != text]
    assert stale == [], f"run `python docs/generate.py`: {stale}"


def test_the_generator_names_a_result_file_it_cannot_render(tmp_path, monkeypatch):
    gen = _generator()
    (tmp_path / "mystery_bench.json").write_text("{}")
    monkeypatch.setattr(gen, "RESULTS", tmp_path)
    try:
        gen.results_page()
    except SystemExit as e:
        assert "mystery_bench" in str(e)
    else:
        raise AssertionError("an unknown result file was rendered silently")


def test_every_flag_and_config_field_is_in_the_references():
    from ctxsae_core.sweep import SweepConfig
    import dataclasses

    cli = (ROOT / "docs" / "cli.md").read_text()
    for flag in ("--l0-coeff", "--shuffle-context", "--autoencoder", "--k-contextual", "--max-minutes"):
        assert f"`{flag}`" in cli
    config = (ROOT / "docs" / "config.md").read_text()
    assert all(f"`{f.name}`" in config for f in dataclasses.fields(SweepConfig))


def test_a_command_continued_over_lines_in_a_benchmarks_help_keeps_its_line_breaks():
    import ast

    joined = []  # a backslash at a line's end inside a plain docstring joins the lines: "...json \\n  --out" -> "json  --out"
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text()), clean=False) or ""
        joined += [f"{path.name}: {line.strip()[:60]}" for line in doc.splitlines() if re.search(r"\S {3,}--", line)]
    assert joined == [], "make the docstring raw (r\"\"\"...) so its continued commands keep their backslashes"


def test_relative_links_resolve_and_the_readme_is_short():
    pages = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if not target.startswith("http") and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert broken == []
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make demo" in readme and "make test" in readme


def test_every_ablation_has_its_description_and_section_on_the_results_page():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import stages  # benchmarks/ is a folder of scripts, not a package

    generate = _generator()
    assert set(generate.ABLATIONS) == set(stages.VARIANTS)
    for joined in generate.JOINED:  # named as --variant names its stage folders and JSON
        assert stages.parse_variant(joined) == joined and "+" in joined
    for run in ("image_converged_taef2_256", "image_converged_taef2_256_8m", "image_converged_taef2_256_8m_encoder_mid",
                "llm_converged_smollm2_resid15"):
        assert {f"{run}_{v}" for v in stages.VARIANTS} <= set(generate.SECTIONS)


def test_an_ablation_is_named_short_of_the_rule_by_each_part_it_misses():
    """The rule: a higher innovation ratio than the plain run, converged, with the control keeping
    under 20% of the gain; a control that keeps exactly 20% misses it."""
    short = _generator()._falls_short
    plain = {"innovation_ratio": 0.80}
    assert short(4, {"innovation_ratio": 1.33, "converged": True, "control_keeps_fraction_of_gain": 0.0}, plain) == []
    assert short(4, {"innovation_ratio": 1.33, "converged": True, "control_keeps_fraction_of_gain": None}, plain) == []
    assert short(8, {"innovation_ratio": 0.80, "converged": False, "control_keeps_fraction_of_gain": 0.2}, plain) == [
        "k 8 does not raise the ratio", "k 8 has not converged", "k 8's control keeps 20% of the gain"]
    assert short(2, {"innovation_ratio": 1.02, "converged": True, "control_keeps_fraction_of_gain": 0.19}, plain) == []


def test_the_synthetic_convergence_words_count_what_was_measured():
    convergence = _generator()._synthetic_convergence
    old = {"fvu": 0.1}  # a point from before the held-out learning curve: no `converged`
    r = {"families": {"topk": {"points": [old, old]},
                      "contextual": {"points": [{"converged": True}, {"converged": False}, {"converged": False}]}}}
    assert convergence(r) == "2 of 3 SAEs not converged, convergence not measured for topk"
    r["families"]["contextual"]["points"] = [{"converged": True}]
    assert convergence(r) == "all 1 SAEs converged, convergence not measured for topk"
    assert convergence({"families": {"topk": {"points": [old]}}}) is None


def test_the_recipe_sweep_says_which_points_ran_at_its_commit():
    """A sweep made whole; one whose swept points were reused; one that retrained named sites and kept
    the others whole from an earlier run, itself partly reused."""
    say = _generator()._recipe_provenance
    assert say(None) == ""
    assert say({"swept_points_from": {"commit": "aaa"}}) == (
        " The swept points were trained at commit `aaa` and reused; only the default recipe's points ran at the "
        "commit above.")
    assert say({"kept_sites_from": {"commit": "bbb"}, "kept_sites_reused": {"swept_points_from": {"commit": "aaa"}},
                "rerun_sites": ["s1", "s2"]}) == (
        " Only the s1, s2 sites' points ran at the commit above; the other sites' points were kept from the run "
        "at commit `bbb` (its swept points from `aaa`).")
    assert say({"kept_sites_from": {"commit": "bbb"}, "kept_sites_reused": None, "rerun_sites": ["s1"]}).endswith(
        "kept from the run at commit `bbb`.")


def test_an_image_runs_readme_label_names_its_budget_its_carry_loss_and_a_headline_only_run():
    label = _generator()._image_label
    sweep = {"tokens": 8_000_000, "carry_coeff": 0.0}
    run = {"images": {"size": 256}, "config": {"sweep": sweep, "autoencoder": "../shared/weights/taef2"},
           "autoencoder": {"autoencoder": "TAEF2 (32 latent channels, ../shared/weights/taef2)"}}
    assert label(run, "latent") == "TAEF2 `latent` at 256 px, 8M positions, learning rates swept"
    offline = {**run, "config": {"sweep": sweep, "autoencoder": "offline"},
               "autoencoder": {"autoencoder": "offline default: AutoencoderKL (SD VAE architecture, ...)"}}
    assert label(offline, "encoder.mid") == ("The offline autoencoder `encoder.mid` at 256 px, 8M positions, learning "
                                             "rates swept")
    assert label({**run, "headline_only": True}, "latent").endswith("swept (headline k only)")
    # a run from before [sweep] carry_coeff existed trained with the carry loss, the default then
    old = {**run, "config": {"sweep": {"tokens": 4_000_000}, "autoencoder": "../shared/weights/taef2"}}
    assert label(old, "latent") == "TAEF2 `latent` at 256 px, 4M positions, learning rates swept, with the carry loss"
    assert label({**old, "variant": "signed"}, "encoder.mid").endswith("4M positions, learning rates swept, "
                                                                      "ablation `signed`")


def test_the_switch_goal_line_says_met_by_the_ratio_and_is_left_out_without_a_comparison():
    line = _generator()._switch_goal
    loc = {"contextual": "contextual_gated_k4", "reference": "topk_k4", "contextual_rate": 0.0056,
           "reference_rate": 0.0090, "control_rate": 0.0147, "ratio": 0.622, "max_ratio": 0.5, "goal_met": False}
    text = line(loc)[1]
    assert "0.0056" in text and "0.0090" in text and "Its shuffled control's: 0.0147." in text
    assert "0.62x (goal <= 0.5x, not met)" in text
    assert "(goal <= 0.5x, met)" in line({**loc, "ratio": 0.4, "goal_met": True, "control_rate": None})[1]
    assert line(None) == []
    # which features the rate averages over: all live ones (results from before the region-tracking rate)
    assert "over all live features" in text
    objects = line({**loc, "rate": "switch_rate_of_object_features"})[1]
    assert "over the object features (the best feature for each object kind" in objects and "live" not in objects


def test_a_readme_row_leads_with_the_best_converged_measured_ratio_and_names_a_higher_unconverged_one():
    row = _generator()._converged_row

    def goal(ratio, converged):
        return {"innovation_ratio": ratio, "converged": converged, "goal_met": ratio >= 1.5,
                "control_keeps_fraction_of_gain": 0.0}
    site = {"goals": {"contextual_gated_k4": goal(1.52, True), "contextual_gated_k2": goal(1.06, True),
                      "contextual_gated_k8": goal(1.80, False)},
            "saes": {"contextual_gated_k4": {"k": 4}, "contextual_gated_k2": {"k": 2}, "contextual_gated_k8": {"k": 8}},
            "seeds": {"innovation_ratio": {"values": [1.52, 1.51, 1.44], "mean": 1.49, "std": 0.04}},
            "headline_k": 4, "ceiling": {"topk_k4": {"best_innovation_ratio": 1.72}}, "all_converged": False}
    assert row("x", site)[1] == ("best converged innovation ratio 1.52x (k 4, 1.49x +- 0.04 over 3 seeds; goal >= "
                                 "1.5x): met; k 8 reaches 1.80x, not converged; persistence ceiling 1.72x at k 4; not "
                                 "all converged")
    # a converged ratio extrapolated beyond the TopK sweep comes after the measured ones
    site["goals"]["contextual_gated_k8"].update(converged=True, extrapolated=True)
    assert row("x", site)[1].startswith("best converged innovation ratio 1.52x (k 4, 1.49x +- 0.04 over 3 seeds; "
                                        "goal >= 1.5x): met; k 8 reaches 1.80x, extrapolated beyond the TopK sweep; ")
    for g in site["goals"].values():  # none converged: the best of all, without the word
        g["converged"] = False
    site["goals"]["contextual_gated_k8"]["extrapolated"] = False
    assert row("x", site)[1].startswith("best innovation ratio 1.80x (k 8; goal >= 1.5x): met; persistence")
    # the ceiling is the TopK SAE's at the row's budget; without one there, the sweep's range
    site["ceiling"]["topk_k2"] = {"best_innovation_ratio": 1.61}
    assert "; persistence ceiling 1.61x to 1.72x; not all converged" in row("x", site)[1]
    site["ceiling"]["topk_k8"] = {"best_innovation_ratio": 1.94}
    assert "; persistence ceiling 1.94x at k 8; not all converged" in row("x", site)[1]
    for g in site["goals"].values():  # every one extrapolated: the best of all, marked
        g["extrapolated"] = True
    assert row("x", site)[1].startswith("best innovation ratio 1.80x (k 8, extrapolated; goal >= 1.5x): met; "
                                        "persistence")


def test_an_ablation_sets_its_seeds_beside_the_plain_runs_paired_by_seed():
    line = _generator()._seed_comparison
    ours = {"headline_k": 4, "seeds": {"innovation_ratio": {"values": [1.58, 1.57, 1.50], "mean": 1.55, "std": 0.05}}}
    plain = {"seeds": {"innovation_ratio": {"values": [1.47, 1.49, 1.42], "mean": 1.46, "std": 0.04}}}
    assert line("gates", ours, plain) == [
        "- Innovation ratio at k 4 over seeds: gates 1.55x +- 0.05 (1.58x, 1.57x, 1.50x); plain 1.46x +- 0.04 "
        "(1.47x, 1.49x, 1.42x); gates minus plain, paired by seed: +0.11, +0.08, +0.08."]
    one = {"seeds": {"innovation_ratio": {"values": [1.47], "mean": 1.47, "std": 0.0}}}
    assert line("gates", ours, one) == [] and line("gates", ours, {}) == []


def test_the_sae_table_shows_the_lowered_threshold_and_names_a_fragile_sae():
    gen = _generator()
    k2 = {"fvu": 0.3872, "threshold_sensitivity": [{"scale": 0.95, "l0": 2.72, "fvu": 0.7530},
                                                   {"scale": 1.05, "l0": 1.96, "fvu": 0.2576}]}
    k4 = {"fvu": 0.1353, "threshold_sensitivity": [{"scale": 0.95, "l0": 4.65, "fvu": 0.1273},
                                                   {"scale": 1.05, "l0": 3.99, "fvu": 0.1440}]}
    assert gen._lowered_threshold_cell(k2) == "0.7530 (2.72)"
    assert gen._lowered_threshold_cell({"fvu": 0.19}) == "-"  # TopK: no threshold
    line = gen._fragile_line({"contextual_gated_k2": k2, "contextual_gated_k4": k4, "topk_k4": {"fvu": 0.19}})
    assert line[0].startswith("Fragile at inference: contextual_gated_k2 reconstruct worse")
    assert gen._fragile_line({"contextual_gated_k4": k4}) == []
    # a column measured after the comparison (benchmarks/threshold_sensitivity.py) says when and at which commit
    added = gen._added_later({"date": "2026-11-28", "commit": "abc1234567"})
    assert "measured after training" in added[0] and "2026-11-28, commit `abc1234567`" in added[0]
    assert gen._added_later(None) == []


def test_a_time_to_quality_cell_judges_convergence_on_the_pairs_it_shows():
    gen = _generator()
    r = {"goals": {"max_time_vs_saelens": 0.5, "max_contextual_time_vs_topk": 2.0},
         "ours_vs_saelens": {"ratio": 0.2}, "contextual_vs_topk": {"ratio": 9.94},
         "ours_topk": {"converged": True}, "saelens_topk": {"converged": False}, "contextual_gated": {"converged": True}}
    assert gen._time_to_quality_cell(r, ["contextual_vs_topk"]) == (
        "the contextual SAE reaches our TopK's in 9.94x its time (goal <= 2.0x)")
    assert gen._time_to_quality_cell(r, ["ours_vs_saelens", "contextual_vs_topk"]) == (
        "ours reaches SAELens's converged FVU in 0.20x its time (goal <= 0.5x); the contextual SAE reaches our "
        "TopK's in 9.94x its time (goal <= 2.0x); not converged")
    del r["ours_vs_saelens"]  # a run without SAELens shows the other pair alone
    assert gen._time_to_quality_cell(r, ["ours_vs_saelens", "contextual_vs_topk"]) == (
        "the contextual SAE reaches our TopK's in 9.94x its time (goal <= 2.0x)")


def test_a_rate_swept_synthetic_run_names_its_choices_and_its_sweep():
    gen = _generator()

    def run(family, k, lr, fvu, converged):
        return {"family": family, "k": k, "lr": lr, "fvu": fvu, "l0": float(k), "state_l0": float(k),
                "converged": converged, "fvu_gain_last_quarter": 0.01 if converged else 0.034, "tokens": 1000,
                "decay_share_of_last_quarter_gain": 0.9}

    rates = {"swept": [0.001, 0.01], "choices": {
        "per-position topk": {"k": 18, "lr": 0.001, "converged": True,
                              "runs": [run("per-position topk", 18, 0.001, 0.2, True),
                                       run("per-position topk", 18, 0.01, 0.1, False)]},
        "contextual gated": {"k": 6, "lr": 0.01, "converged": False,
                             "runs": [{"family": "contextual gated", "k": 6, "lr": 0.001, "diverged": "FVU 3 > 1"},
                                      run("contextual gated", 6, 0.01, 0.08, False)]},
        "gated, shuffled control": {"lr": 0.01, "of": "contextual gated"}}}
    assert gen._synthetic_rates(rates) == (
        "learning rates 0.001, 0.01 swept at each family's headline k (per-position topk 18, contextual gated 6); "
        "each keeps its lowest converged held-out FVU (per-position topk: 0.001; contextual gated: 0.01 (the lowest "
        "FVU, as no rate converged)), and every other k and the shuffled control (its carry's recipe with the "
        "positions shuffled) train at that rate. ")
    table = gen._synthetic_rate_table(rates)[0].splitlines()
    assert table[2:] == ["| per-position topk (k 18) | 0.2000 | 0.1000 (not converged, 3.4%, 90% of it after the "
                         "decay starts) |",
                         "| contextual gated (k 6) | diverged | 0.0800 (not converged, 3.4%, 90% of it after the decay "
                         "starts) |"]


def test_the_recipe_sweep_says_how_much_room_the_formula_leaves_a_range_test():
    gen = _generator()

    def site(name, ratio, batch=4096):
        return {"site": {"name": name, "batch_tokens": batch}, "default_vs_best": ratio,
                **({"met": ratio <= 1.05} if batch == 4096 else {})}

    r = {"results": [site("a", 1.012), site("b", 0.98), site("c", 1.004), site("d", 1.17, batch=16384)]}
    text = gen._range_test_headroom(r)[0]
    assert "within 1.2% of the best swept rate's at every site trained at the default batch (the most at a)" in text
    assert "at or below it at 1 of 3" in text  # the batch-16384 site carries no goal and is not counted
    assert gen._range_test_headroom({"results": [site("d", 1.17, batch=16384)]}) == []


def test_a_budget_run_at_a_set_rate_names_it_and_the_default():
    gen = _generator()
    setup = {"carry": "gated", "k": 6, "width": 512, "d": 128, "T": 64, "batch_windows": 64, "decay_fraction": 0.2}
    r = {"budgets": [], "doublings": [], "setup": {**setup, "lr": 0.003, "lr_is_default": False}}
    assert "under the defaults but for the learning rate, 0.003 (the default is 0.01): 64 windows" in gen._synthetic_budget(r)[0]
    r["setup"] = {**setup, "lr": 0.01}  # a run from before --lr: at the default rate
    assert "under the defaults: learning rate 0.01, 64 windows" in gen._synthetic_budget(r)[0]


def test_the_goal_tables_footnote_comes_only_with_a_starred_topk_l0():
    table = _generator()._goal_table
    goal = {"l0": 4.23, "fvu": 0.1537, "topk_l0_at_same_fvu": 5.57, "extrapolated": False, "innovation_ratio": 1.32,
            "psnr": 25.6, "topk_psnr_at_that_l0": 25.8, "control_fvu": 0.207, "goal_met": False}
    measured = table({"contextual_gated_k4": goal}, "psnr", "PSNR (dB)")
    assert "| contextual_gated_k4 | 4.23 | 0.154 | 5.57 | 1.32 |" in measured[0]
    assert not any("extrapolated" in line for line in measured)
    starred = table({"contextual_gated_k4": goal, "contextual_gated_k8": {**goal, "extrapolated": True,
                                                                          "topk_l0_at_same_fvu": 17.2}},
                    "psnr", "PSNR (dB)")
    assert "| 17.20* |" in starred[0] and "\\* extrapolated beyond the TopK sweep." in starred


def test_a_joined_ablation_sets_its_rate_sweep_beside_the_plain_run_and_each_part_that_ran(tmp_path):
    generate = _generator()

    def site(fvus: dict) -> dict:
        return {"latent": {"rate_sweep": {series: {lr: {"fvu": f, "converged": c} for lr, (f, c) in by_rate.items()}
                                          for series, by_rate in fvus.items()}}}
    plain = site({"topk": {"0.001": (0.19, True)}, "contextual_gated": {"0.001": (0.15, False), "0.01": (0.13, True)}})
    frozen = site({"contextual_gated": {"0.001": (0.148, False)}})  # its lr 0.01 stage diverged: no row
    joined = {**site({"topk": {"0.001": (0.19, True)}, "contextual_gated": {"0.001": (0.145, True),
                                                                            "0.01": (0.128, False)}})["latent"],
              "headline_k": 4}
    plain_file = tmp_path / "run.json"
    plain_file.write_text(json.dumps({"hooks": plain}))
    (tmp_path / "run_carry_freeze.json").write_text(json.dumps({"hooks": frozen}))  # no run_no_anneal.json
    lines = generate._joined_sweep("carry_freeze+no_anneal", "latent", joined, plain, plain_file)
    assert lines[-1].splitlines() == [
        "| series | lr | plain | carry_freeze | carry_freeze+no_anneal |", "| --- | --- | --- | --- | --- |",
        "| contextual_gated | 0.001 | 0.1500 | 0.1480 | 0.1450* |",
        "| contextual_gated | 0.01 | 0.1300* | - | 0.1280 |"]
    assert generate._joined_sweep("carry_freeze", "latent", joined, plain, plain_file) == []
