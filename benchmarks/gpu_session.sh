#!/usr/bin/env bash
# Everything a session with a lent GPU should run, in one device call (see benchmarks/NOTES.md):
#   bash benchmarks/gpu_session.sh [benchmarks.bench_attention arguments...]
# CUDA tests first, then the attention and model benchmarks; logs and results land in $OUT and benchmarks/results/.
set -uo pipefail
OUT=${OUT:-/tmp/intfa-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1

# Wheels carried in .whl/ (e.g. sageattention 1.0.6), installed beside the machine's torch and triton.
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi

# The package as pip would install it (passes/ and kernels/ inside intfa_compile, the backend's entry
# point registered), without needing pip's build tools there.
site=/tmp/intfa-site
rm -rf "$site" && mkdir -p "$site/intfa_compile" "$site/intfa_compile-0.1.0.dist-info"
for f in "$PWD"/intfa_compile/*.py; do ln -s "$f" "$site/intfa_compile/"; done
ln -s "$PWD/passes" "$site/intfa_compile/passes"
ln -s "$PWD/kernels" "$site/intfa_compile/kernels"
printf 'Metadata-Version: 2.1\nName: intfa-compile\nVersion: 0.1.0\n' > "$site/intfa_compile-0.1.0.dist-info/METADATA"
printf '[torch_dynamo_backends]\nintfa = intfa_compile.backend:intfa_backend\n' \
    > "$site/intfa_compile-0.1.0.dist-info/entry_points.txt"
export PYTHONPATH=$site:$PWD${PYTHONPATH:+:$PYTHONPATH}

{
    nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
} 2>&1 | tee "$OUT/device.txt"

python3 -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/test_int8_flash_attention.py tests/test_ops.py \
    tests/test_fp8_baseline.py tests/test_backend.py 2>&1 | tee "$OUT/pytest_gpu.log" | tail -n 15

python3 -m benchmarks.bench_attention "$@" 2>&1 | tee "$OUT/bench.log" | tail -n 60
# The whole-model prefill (issue 4); MODEL_LENGTHS="4096 8192 16384" by default, "" to skip.
if [ -n "${MODEL_LENGTHS-4096 8192 16384}" ]; then
    python3 -m benchmarks.bench_model --lengths ${MODEL_LENGTHS-4096 8192 16384} 2>&1 | tee "$OUT/bench_model.log" \
        | tail -n 15
fi
cp benchmarks/results/* "$OUT/" 2>/dev/null || true
