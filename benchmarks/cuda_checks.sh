#!/usr/bin/env bash
# The checks that need a GPU, in one run: the CUDA tests (fused block kernels, LSH attention on SDPA's CUDA
# kernels and on xformers, the attention dispatch's xformers backend), then the LSH benchmark in bf16 on the
# GPU, and a profile of one 64K-token call. Run from the repository root on a CUDA machine with torch installed:
#
#     bash benchmarks/cuda_checks.sh [OUT_DIR]
#
# Wheels in .whl/ (xformers, the benchmark's peers) are installed into /tmp/site first when present, for
# machines without a package index. Logs and tables go to OUT_DIR (default: cuda-checks/).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-cuda-checks}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
python3 - <<'EOF' 2>&1 | tee "$out/environment.txt"
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name())
try:
    import xformers
    import xformers.ops  # noqa: F401
    print("xformers", xformers.__version__)
except Exception as error:
    print("xformers unavailable:", type(error).__name__, error)
from chunkformer.ops import available_backends
for name, status in available_backends().items():
    print(name, status.available, "; ".join(status.reasons))
EOF

status=0
SECONDS=0
HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" timeout 300 python3 -m pytest -q -p no:cacheprovider -rs \
    tests/ops/test_block_attention.py tests/ops/test_lsh.py -k "not test_gradcheck" \
    "tests/ops/test_lsh_attention.py::test_fused_kernels_match_the_math_kernel" \
    "tests/ops/test_lsh_attention.py::test_fused_half_precision_is_finite_and_close_to_float32" \
    "tests/ops/test_lsh_attention.py::test_fused_kernels_are_strictly_causal" tests/ops/test_attention.py \
    2>&1 | tee "$out/tests.log" | tail -25 || status=1
echo "tests: ${SECONDS} s"

timeout 400 python3 benchmarks/lsh_attention.py --device cuda --dtype bf16 --in-process --repeats 10 \
    --lengths 1024 4096 16384 65536 --hashes 1 4 \
    --impls chunkformer-sdpa chunkformer-xformers reformer-pytorch hf-reformer sdpa-full \
    --markdown-out "$out/lsh_bf16.md" --json-out "$out/lsh_bf16.json" --plot-out "$out/lsh_bf16.png" \
    2>"$out/bench_bf16.err" || status=1
tail -3 "$out/bench_bf16.err"
echo "tests and benchmark: ${SECONDS} s"
timeout 120 python3 benchmarks/lsh_profile.py --device cuda --dtype bf16 --length 65536 --hashes 4 --rows 30 \
    >"$out/profile_64k_bf16.txt" 2>&1 || status=1
tail -36 "$out/profile_64k_bf16.txt" | cut -c1-160
exit $status
