#!/usr/bin/env bash
# Every GPU check of the workbench in one run, for a machine with CUDA and PyTorch already
# installed (as the lent H100/H200 machines are): the gpu-marked tests, the contextual-cost grid
# and the time-to-quality benchmark on CUDA, and a 2-GPU torchrun check when there are 2 GPUs.
# About 6 minutes on one H100 (each step has a time limit: 2, 3.3 and 3 minutes). Results and logs go to the folder given (default runs/gpu):
#
#     bash benchmarks/gpu_run.sh runs/gpu
#
# SAELens, for the time-to-quality comparison, is used when importable (wheels in .whl/ are
# installed to /tmp/site first when that folder exists).
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
timeout 120 python3 -m pytest -m gpu -q -p no:cacheprovider tests/ctxsae_core 2>&1 | tee "$OUT/gpu_tests.log" | tail -15

echo "== contextual cost grid on CUDA"
timeout 200 python3 benchmarks/contextual_cost.py --device cuda --out "$OUT/contextual_cost_cuda.json" 2>&1 \
    | tee "$OUT/contextual_cost_cuda.log"

echo "== time to quality on CUDA"
SKIP=""
python3 -c "import sae_lens" 2>"$OUT/saelens_import.log" || SKIP="--skip-saelens"
timeout 180 python3 benchmarks/time_to_quality.py --device cuda --tokens 2000000 --data-tokens 1000000 \
    --eval-every 125000 $SKIP \
    --out "$OUT/time_to_quality_cuda.json" 2>&1 | tee "$OUT/time_to_quality_cuda.log"

if [ "$(python3 -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    echo "== torchrun on 2 GPUs"
    python3 -c "import numpy as np; np.save('/tmp/acts.npy', np.random.default_rng(0).standard_normal((4096, 64, 128)).astype('float32'))"
    timeout 120 python3 -m ctxsae_core.cli train --acts /tmp/acts.npy --k 16 --tokens 2000000 --device cuda --nproc 2 \
        --no-progress --out /tmp/ddp 2>&1 | tee "$OUT/torchrun_2gpu.log"
fi
