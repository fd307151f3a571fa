#!/usr/bin/env bash
# Every GPU check of the workbench in one run, for a machine with CUDA and PyTorch already
# installed (as the lent H100/H200 machines are): the gpu-marked tests, the time-to-quality
# benchmark on CUDA at the CPU run's settings (its learning-rate sweeps and budgets, so the two
# results compare), the contextual-cost grid with what time is left, and a 2-GPU torchrun check
# when there are 2 GPUs. On one H100 the tests took 32 s, and time to quality 241 s with one
# contextual learning rate (each takes about 170 s), so about 8 minutes before the cost grid; each
# step has a time limit (3, 8 and 3 minutes). Results and logs go to the folder given (default
# runs/gpu):
#
#     bash benchmarks/gpu_run.sh runs/gpu
#
# SAELens, for the time-to-quality comparison, is used when importable (wheels in .whl/ are
# installed to /tmp/site first when that folder exists); otherwise that pair is skipped.
set -u
OUT=${1:-runs/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/nvidia_smi.csv"
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

echo "== gpu-marked tests"
timeout 180 python3 benchmarks/gpu_tests.py --out "$OUT/gpu_tests.json" 2>&1 | tee "$OUT/gpu_tests.log" | tail -15

echo "== time to quality on CUDA"
SKIP=""
python3 -c "import sae_lens" 2>"$OUT/saelens_import.log" || SKIP="--skip-saelens"
timeout 480 python3 benchmarks/time_to_quality.py --device cuda $SKIP \
    --out "$OUT/time_to_quality_cuda.json" 2>&1 | tee "$OUT/time_to_quality_cuda.log"

echo "== contextual cost grid on CUDA"
timeout 180 python3 benchmarks/contextual_cost.py --device cuda --out "$OUT/contextual_cost_cuda.json" 2>&1 \
    | tee "$OUT/contextual_cost_cuda.log"

if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo "== torchrun on 2 GPUs"
    python3 -c "import numpy as np; np.save('/tmp/acts.npy', np.random.default_rng(0).standard_normal((4096, 64, 128)).astype('float32'))"
    timeout 120 python3 -m ctxsae_core.cli train --acts /tmp/acts.npy --k 16 --tokens 2000000 --device cuda --nproc 2 \
        --no-progress --out /tmp/ddp 2>&1 | tee "$OUT/torchrun_2gpu.log"
fi
