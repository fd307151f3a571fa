"""The main job end to end on configs/quick.toml: metrics.json, the report in headless
Chromium, the notebook, and one-line errors for bad input."""

import json
from pathlib import Path

import pytest
import torch

from ctxsae_core.checkpoint import load_sae
from ctxsae_core.evaluate import evaluate
from ctxsae_core.metrics import persistence
from ctxsae_common.cache import CACHE_ENV
from visinterp.cli import main
from visinterp.image.config import load_run_config
from visinterp.image.view import RunView

ROOT = Path(__file__).resolve().parents[3]
QUICK = ROOT / "configs" / "quick.toml"
TAEF2 = ROOT.parent / "shared" / "weights" / "taef2"
REQUIRED = ("arch", "axis", "hook", "l0", "state_l0", "fvu", "dead_fraction", "psnr_vs_clean_decode", "psnr_vs_input")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="module")
def quick_run(cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("quick")
    assert main(["run", "--config", str(QUICK), "--out", str(out), "--no-progress"]) == 0
    return out


def test_the_quick_configs_contextual_saes_carry_for_most_of_training(quick_run, carry_start):
    for folder in sorted((quick_run / "saes").glob("*/contextual_*")):
        start, last = carry_start(folder)
        assert start is not None and start < last / 2, (folder.name, start, last)  # measured: step 45 of 146


def test_metrics_hold_every_sae_and_its_control(quick_run):
    metrics = json.loads((quick_run / "metrics.json").read_text())
    cfg = load_run_config(QUICK)
    assert metrics["autoencoder"]["autoencoder"].startswith("offline default")
    names = set(metrics["saes"])
    for hook in cfg.harvest.hooks:
        for k in cfg.sweep.k:
            m = metrics["saes"][f"{hook}/topk_k{k}"]
            assert k - 0.5 < m["l0"] <= k and m["state_l0"] == m["l0"]  # at most k per patch (ReLU after the top k)
            assert "threshold_sensitivity" not in m  # TopK has no threshold to move
        for k in cfg.sweep.k_contextual:
            ctx, ctl = metrics["saes"][f"{hook}/contextual_gated_k{k}"], metrics["saes"][f"{hook}/contextual_gated_k{k}_control"]
            assert ctx["state_l0"] >= ctx["l0"] - 1e-6 and ctl["family"] == "control" and ctx["family"] == "contextual"
            for row in (ctx, ctl):  # BatchTopK: held-out figures with the inference threshold 5% lower and higher
                lower, higher = row["threshold_sensitivity"]
                assert (lower["scale"], higher["scale"]) == (0.95, 1.05) and lower["l0"] > higher["l0"]
    assert len(names) == len(cfg.harvest.hooks) * (len(cfg.sweep.k) + 2 * len(cfg.sweep.k_contextual))
    for m in metrics["saes"].values():
        assert all(key in m for key in REQUIRED)
        assert 0 < m["fvu"] < 2 and 0 <= m["dead_fraction"] <= 1 and m["axis"] == "raster"
        assert m["psnr_vs_clean_decode"] > 5 and m["psnr_vs_input"] > 5
    n_held = len(metrics["held_out_images"])
    assert n_held == round(cfg.images.n * cfg.images.held_out)
    assert metrics["autoencoder_psnr_vs_input"] > 10


def test_saved_saes_reload_to_the_reported_metrics(quick_run):
    """The view reads the run folder alone (run.json's held-out windows, the SAE folders) and
    gets the figures the job reported from its one pass over the held-out windows."""
    cfg = load_run_config(QUICK)
    metrics = json.loads((quick_run / "metrics.json").read_text())
    data = RunView(quick_run).hook("latent")
    for name in ("topk_k2", "contextual_gated_k1", "contextual_gated_k1_control"):
        model, axis = load_sae(quick_run / "saes" / "latent" / name)
        assert axis.kind == "raster" and axis.grid == tuple(metrics["saes"][f"latent/{name}"]["grid"])
        scores = evaluate(model, data.held_x, axis, shuffle_context=name.endswith("control"), seed=cfg.sweep.seed)
        assert scores["fvu"] == pytest.approx(metrics["saes"][f"latent/{name}"]["fvu"], rel=1e-5)
    # the persistence ceiling of a per-position SAE, from its reloaded codes along the raster scan; none for the others
    ceiling = persistence(data.code("topk_k2") != 0)
    assert metrics["saes"]["latent/topk_k2"]["persistence"] == pytest.approx(ceiling)
    assert 0 < ceiling["persistent_fraction"] < 1 and "persistence" not in metrics["saes"]["latent/contextual_gated_k1"]


def test_splicing_the_true_latent_reproduces_the_clean_decode(quick_run):
    view = RunView(quick_run)
    torch.testing.assert_close(view.autoencoder.splice(view.held_images, "latent", lambda m: m), view.clean)


def test_the_view_needs_only_the_run_folder(quick_run, tmp_path, monkeypatch):
    """Moved elsewhere, with the autoencoder cache emptied, the run still opens: the view reads
    its copy of the offline autoencoder, the held-out images and run.json's map shape."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(quick_run, moved)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "empty_cache"))
    view = RunView(moved)
    run = json.loads((moved / "run.json").read_text())
    assert run["hooks"]["latent"]["map_hw"] == [8, 8] and run["autoencoder"]["folder"] == "autoencoder"
    maps = view.state_maps("latent")
    assert len(maps) == len(run["held_out_images"]) and maps[0].shape[-2:] == (8, 8)
    view.steer("latent", [0], images=1)
    assert not (tmp_path / "empty_cache").exists()


def test_report_loads_in_headless_chromium_without_console_errors(quick_run, open_in_chromium):
    page = open_in_chromium(quick_run / "report.html")
    assert page["errors"] == []
    figures = sorted(p.stem for p in (quick_run / "figures").glob("*.png"))
    assert sorted(alt for _, _, alt in page["images"]) == figures  # every figure is on the page...
    assert all(done and width > 100 for done, width, _ in page["images"])  # ...and decodes
    assert "pareto" in figures and "latent_steering" in figures and "autoencoder_errors" in figures
    assert page["title"] == f"visinterp run: {quick_run.name}"


def test_notebook_runs_on_the_quick_run(quick_run, cache, run_notebook):
    nb = run_notebook("explore_unnamed_features.ipynb", "VISINTERP_RUN", quick_run)
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    metrics = json.loads((quick_run / "metrics.json").read_text())
    n_unnamed = len(metrics["alignment"]["latent"][metrics["analysed"]["latent"][1]]["unnamed"])
    assert f"{n_unnamed} unnamed features" in text and "groups: [[" in text
    pictures = [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    assert len(pictures) == 2  # the gallery and the steering figure


def test_bad_configs_exit_2_with_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nwidht = 4\n")
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown field(s) widht" in err and err.count("\n") == 1
    assert main(["run", "--config", str(tmp_path / "none.toml"), "--out", str(tmp_path / "o")]) == 2
    assert "no such config file" in capsys.readouterr().err
    bad.write_text('autoencoder = "%s"\n[images]\nn = 5\nsize = 16\n[harvest]\nhooks = ["encoder.mid", "nope"]\n' % TAEF2)
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "unknown hook 'nope'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before any scene was rendered


def test_offline_hooks_are_checked_before_the_autoencoder_trains(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CTXSAE_CACHE", str(tmp_path / "cache"))
    bad = tmp_path / "bad.toml"
    bad.write_text('autoencoder = "offline"\n[harvest]\nhooks = ["latent", "encoder.down.7"]\n')
    assert main(["run", "--config", str(bad), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "unknown hook 'encoder.down.7' for the offline autoencoder: choose from latent, encoder.down.0" in err
    assert not (tmp_path / "cache").exists() and not (tmp_path / "o").exists()


def test_a_folder_of_photos_runs_with_taef2_and_no_scene_truth(tmp_path, capsys):
    from matplotlib import cbook
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    hopper = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    for i in range(6):  # six crops of one photo, saved as PNG
        hopper.crop((40 * i, 20 * i, 40 * i + 300, 20 * i + 300)).save(photos / f"crop{i}.png")
    cfg = tmp_path / "photos.toml"
    cfg.write_text(f'autoencoder = "{TAEF2}"\n[images]\nsource = "{photos}"\nn = 6\nsize = 32\n'
                   '[harvest]\nhooks = ["latent"]\n[sweep]\nwidth = 16\nk = [2]\nk_contextual = [1]\ntokens = 2000\n'
                   '[report]\nfeatures = 2\ntop_images = 2\n')
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["images"]["files"] == [f"crop{i}.png" for i in range(6)]
    assert metrics["autoencoder"]["latent_channels"] == 32 and metrics["alignment"]["latent"] == {}
    assert "autoencoder_error_by_factor" not in metrics  # no scene truth for photos
    assert metrics["saes"]["latent/topk_k2"]["grid"] == [4, 4]  # 32 px / 8
    assert (out / "report.html").stat().st_size > 10_000 and "Factor alignment" not in (out / "report.html").read_text()


def test_a_sweep_of_topk_saes_alone_runs_and_reports_without_an_analysed_pair(tmp_path):
    """`carries = []`: no contextual SAE to analyse (the converged benchmark's TopK budget stages),
    so no pair, no alignment and no maps in the report, and the view says which SAE to name."""
    from ctxsae_common.errors import InputError

    cfg = tmp_path / "topk.toml"
    cfg.write_text(f'autoencoder = "{TAEF2}"\n[images]\nn = 6\nsize = 32\n[harvest]\nhooks = ["latent"]\n'
                   '[sweep]\nwidth = 16\nk = [2, 4]\ncarries = []\ntokens = 2000\n[report]\nfeatures = 2\n')
    out = tmp_path / "out"
    assert main(["run", "--config", str(cfg), "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["saes"]) == ["latent/topk_k2", "latent/topk_k4"]
    assert metrics["analysed"]["latent"] == [] and metrics["alignment"]["latent"] == {}
    assert "trained only one of them" in (out / "report.html").read_text()
    with pytest.raises(InputError, match="trained no contextual SAE"):
        RunView(out).contextual("latent")
    assert RunView(out).state_maps("latent", "topk_k2")[0].shape[1:] == (4, 4)


def test_saes_trained_two_at_a_time_report_the_figures_of_one_at_a_time(tmp_path, capsys):
    """`--jobs 2`: two worker processes on one thread each train the sweep; every SAE's row (FVU,
    L0, PSNR, learning curve, ...) equals that of one SAE after another, at the same thread count."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'autoencoder = "{TAEF2}"\n[images]\nn = 8\nsize = 32\nheld_out = 0.25\n[harvest]\n'
                   'hooks = ["latent"]\n[sweep]\nwidth = 16\nk = [2]\nk_contextual = [1]\ntokens = 3000\n'
                   '[report]\nfeatures = 2\ntop_images = 2\n')
    threads = torch.get_num_threads()
    try:
        assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "one"), "--no-progress", "--threads", "1",
                     "--device", "cpu"]) == 0
        assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "two"), "--no-progress", "--threads", "1",
                     "--jobs", "2", "--device", "cpu"]) == 0
    finally:
        torch.set_num_threads(threads)
    one, two = (json.loads((tmp_path / f / "metrics.json").read_text())["saes"] for f in ("one", "two"))
    assert sorted(one) == ["latent/contextual_gated_k1", "latent/contextual_gated_k1_control", "latent/topk_k2"]
    assert one == two
    capsys.readouterr()
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "bad"), "--jobs", "0"]) == 2
    err = capsys.readouterr().err
    assert "--jobs 0 must be at least 1" in err and err.count("\n") == 1
    assert not (tmp_path / "bad").exists()


def test_visinterp_run_under_torchrun_shares_the_harvest_and_reports_once(torchrun, tmp_path):
    """`torchrun --nproc-per-node 2 -m visinterp.cli run`: rank 0 renders the scenes, both ranks
    harvest half the images each into the one store a single process writes, and rank 0 alone
    trains and reports (the same SAE figures as one process)."""
    import sys

    from ctxsae_core.store import ActivationStore

    cfg = tmp_path / "tiny.toml"
    cfg.write_text(f'autoencoder = "{TAEF2}"\n[images]\nn = 8\nsize = 32\nheld_out = 0.25\n[harvest]\n'
                   'hooks = ["latent"]\nbatch_images = 2\n[sweep]\nwidth = 16\nk = [2]\nk_contextual = [1]\n'
                   'tokens = 3000\n[report]\nfeatures = 2\ntop_images = 2\n')
    assert main(["run", "--config", str(cfg), "--out", str(tmp_path / "one"), "--no-progress", "--device", "cpu"]) == 0
    two = torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m",
                    "visinterp.cli", "run", "--config", str(cfg), "--out", str(tmp_path / "two"), "--no-progress",
                    "--device", "cpu"], timeout=600)
    assert two.returncode == 0, torchrun.failure(two)
    assert two.stdout.count("wrote ") == 1  # one report, from rank 0
    a, b = ActivationStore(tmp_path / "one" / "store" / "latent"), ActivationStore(tmp_path / "two" / "store" / "latent")
    assert a.n_windows == b.n_windows == 8 and a.identity == b.identity
    torch.testing.assert_close(b.gather(torch.arange(8)), a.gather(torch.arange(8)), rtol=0, atol=1e-5)
    one, two = (json.loads((tmp_path / f / "metrics.json").read_text())["saes"] for f in ("one", "two"))
    assert one.keys() == two.keys()
    for name in one:  # rank 0 trains with its share of the cores: other thread counts round otherwise
        assert two[name]["l0"] == pytest.approx(one[name]["l0"], rel=0.05), name
        assert two[name]["fvu"] == pytest.approx(one[name]["fvu"], rel=0.02), name


def test_the_aligned_saes_are_the_analysed_pair_or_the_middle_contextual_sae_with_its_control():
    from types import SimpleNamespace

    from visinterp.image.run import ImageJob

    job = ImageJob.__new__(ImageJob)  # no autoencoder, no images: only the sweep is read
    job.cfg = SimpleNamespace(sweep=SimpleNamespace(carries=("gated",)))
    ctx = {f"contextual_gated_k{k}": {"series": "contextual_gated", "k": k, "family": "contextual", "fvu": 0.2}
           for k in (2, 4, 8)}
    controls = {f"{n}_control": {"series": "contextual_gated_control", "k": m["k"], "family": "control", "fvu": 0.3}
                for n, m in ctx.items()}
    aligned = job.aligned
    assert aligned({**ctx, **controls}, ("topk_k8", "contextual_gated_k4")) == [
        "topk_k8", "contextual_gated_k4", "contextual_gated_k4_control"]
    # an ablation's stage: contextual SAEs and controls alone
    assert aligned({**ctx, **controls}, None) == ["contextual_gated_k4", "contextual_gated_k4_control"]
    assert aligned(ctx, None) == ["contextual_gated_k4"]  # no control trained
    assert aligned({"topk_k4": {"series": "topk", "k": 4, "family": "per-position", "fvu": 0.2}}, None) == []
    job.cfg.sweep.carries = ()
    assert aligned({**ctx, **controls}, None) == []


def test_threshold_sensitivity_is_filled_in_from_a_stages_saved_saes(quick_run, tmp_path):
    """`benchmarks/threshold_sensitivity.py` on a run folder laid out as a comparison's stage,
    its rows stripped of the figure: it gives back what the job wrote, to the stage, its kept
    copy and a result; a row whose FVU is not its SAE's is refused with nothing written."""
    import shutil
    import sys

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import threshold_sensitivity as backfill  # benchmarks/ is a folder of scripts, not a package

    stage, kept = tmp_path / "runs" / "latent" / "k_contextual", tmp_path / "kept" / "latent" / "k_contextual"
    shutil.copytree(quick_run, stage)
    written = json.loads((stage / "metrics.json").read_text())
    stripped = {**written, "saes": {n: {k: v for k, v in m.items() if k != "threshold_sensitivity"}
                                    for n, m in written["saes"].items()}}
    thresholded = sorted(n for n, m in written["saes"].items() if "threshold_sensitivity" in m)
    assert len(thresholded) == 8  # two hooks, k 1 and 2, each contextual SAE and its control
    for path in (stage / "metrics.json", kept / "metrics.json"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(stripped))
    rows = {n.split("/", 1)[1]: m for n, m in stripped["saes"].items() if n.startswith("latent/")}
    result = tmp_path / "result.json"
    result.write_text(json.dumps({"hooks": {"latent": {"saes": rows}}}))

    bad = json.loads(json.dumps(stripped))
    bad["saes"][thresholded[0]]["fvu"] *= 1.01
    (stage / "metrics.json").write_text(json.dumps(bad))
    with pytest.raises(SystemExit) as stop:
        backfill.main(["--runs", str(tmp_path / "runs"), "--no-progress"])
    assert stop.value.code == 2 and json.loads((stage / "metrics.json").read_text()) == bad

    (stage / "metrics.json").write_text(json.dumps(stripped))
    assert backfill.main(["--runs", str(tmp_path / "runs"), "--kept", str(tmp_path / "kept"),
                          "--results", str(result), "--no-progress"]) == 0
    for path in (stage / "metrics.json", kept / "metrics.json"):
        again = json.loads(path.read_text())["saes"]
        for name in thresholded:
            points, want = again[name]["threshold_sensitivity"], written["saes"][name]["threshold_sensitivity"]
            assert [p["scale"] for p in points] == [w["scale"] for w in want] == [0.95, 1.05]
            for p, w in zip(points, want):
                assert (p["l0"], p["fvu"]) == pytest.approx((w["l0"], w["fvu"]), rel=1e-5), (path, name)
        assert not any("threshold_sensitivity" in again[n] for n in set(again) - set(thresholded))
    filled = json.loads(result.read_text())
    assert sorted(n for n, m in filled["hooks"]["latent"]["saes"].items() if "threshold_sensitivity" in m) == \
        sorted(n.split("/", 1)[1] for n in thresholded if n.startswith("latent/"))
    assert filled["threshold_sensitivity_added"]["commit"]
