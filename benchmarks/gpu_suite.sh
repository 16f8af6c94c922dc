#!/usr/bin/env bash
# Everything that needs a GPU, in one run of at most 8 minutes on one H200 (docs/benchmarks.md, "The GPU
# suite"): the environment, the CUDA tests (Triton kernels compiled for the GPU, not interpreted; a refusal
# fails), the LSH benchmark at loads that fill a GPU (a), SCT-S's LSH layer on the block path and on the
# Triton kernels against a ChunkAttention layer (b), every attention layer of the library side by side (the
# zoo's and SCT's), the model training-step table (SCT-S on the block path too), and the recipe killed and
# resumed under torchrun. Run from anywhere:
#
#     bash benchmarks/gpu_suite.sh OUT            # on a CUDA machine with torch installed
#     bash benchmarks/gpu_suite.sh OUT --smoke    # every step on the CPU at toy sizes, in under 2 minutes
#
# Each step has a time budget (`timeout`): environment 10, tests 70, lsh 25 + 40 + 15 + 25, lsh_layer 35,
# zoo_layers 15, models 30 + 30 + 20 (block path) + 55 (compile) + 15 (checkpointing), recipe_resume 70; with the
# wheels' 20 s they add up to 475 s (the figures and the summary take the rest of the 480), so one slow step
# costs its own table, not the run. Markdown tables, PNG figures and one log per step go to OUT;
# OUT/summary.md collects the tables and OUT/timings.txt the seconds each step took. Exit status 1 if any step
# failed or ran out of time.
# Wheels in .whl/ (xformers, the benchmark's peers, the recipe's modules) are installed into /tmp/site first
# when present, for machines without a package index. PYTHON picks the interpreter (default python3).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:?usage: bash benchmarks/gpu_suite.sh OUT [--smoke]}"
smoke=0
[[ "${2:-}" == "--smoke" ]] && smoke=1
mkdir -p "$out"
out="$(cd "$out" && pwd)"
py="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
: >"$out/timings.txt"
status=0

# step NAME BUDGET_S COMMAND...: runs COMMAND under its budget, logs to OUT/NAME.log, records the seconds.
step() {
    local name=$1 budget=$2
    shift 2
    local start=$SECONDS rc
    echo "== $name (budget $budget s)"
    timeout --kill-after=5 "$budget" "$@" >"$out/$name.log" 2>&1
    rc=$?
    echo "$name: $((SECONDS - start)) s of $budget s, exit $rc" | tee -a "$out/timings.txt"
    if [[ $rc -ne 0 ]]; then
        status=1
        [[ $rc -eq 124 || $rc -eq 137 ]] && echo "$name: ran out of its $budget s budget"
        tail -15 "$out/$name.log" | cut -c1-200
    fi
}

# skip NAME REASON: a part the smoke mode cannot run on the CPU, said in the log and the timings.
skip() {
    echo "$1: skipped: $2" | tee -a "$out/timings.txt"
}

if (( smoke )); then
    echo "gpu_suite --smoke: CPU, toy sizes; no wheels installed"
elif compgen -G ".whl/*.whl" >/dev/null; then
    timeout 20 "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi

step environment 10 "$py" - <<'EOF'
import torch
cuda = torch.cuda.is_available()
print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name() if cuda else "(no GPU)")
from importlib.metadata import PackageNotFoundError, version
for package in ("triton", "xformers", "reformer-pytorch", "transformers"):
    try:
        print(package, version(package))
    except PackageNotFoundError:
        print(package, "not installed")
from chunkformer.ops import available_backends
for name, state in available_backends().items():
    print("backend", name, state.available, "; ".join(state.reasons))
EOF
cat "$out/environment.log"

# The CUDA tests: the fused block kernels, LSH attention on SDPA's CUDA kernels and on xformers, the dispatch,
# and the Triton LSH kernels. tests/conftest.py sets TRITON_INTERPRET=1 only without CUDA, so on the GPU they
# run compiled; it is unset here so that a caller's setting cannot turn that off. With
# CHUNKFORMER_REQUIRE_TRITON=1, test_lsh_triton.py fails at collection, naming the reasons, where the backend
# refuses the GPU (without it, it would skip); the other modules still run.
tests=(
    tests/ops/test_block_attention.py tests/ops/test_lsh.py
    "tests/ops/test_lsh_attention.py::test_fused_kernels_match_the_math_kernel"
    "tests/ops/test_lsh_attention.py::test_fused_half_precision_is_finite_and_close_to_float32"
    "tests/ops/test_lsh_attention.py::test_fused_kernels_are_strictly_causal"
    tests/ops/test_attention.py tests/ops/test_lsh_triton.py tests/ops/test_lsh_auto.py
)
if (( smoke )); then
    # On the CPU they skip or run minutes in Triton's interpreter (CI runs them there); collecting them still
    # catches a renamed or removed test that this list names.
    step tests 60 env -u TRITON_INTERPRET "$py" -m pytest -q -p no:cacheprovider --collect-only \
        -k "not test_gradcheck" "${tests[@]}"
else
    step tests 70 env -u TRITON_INTERPRET CHUNKFORMER_REQUIRE_TRITON=1 \
        HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" "$py" -m pytest -q -p no:cacheprovider -rs \
        --continue-on-collection-errors -k "not test_gradcheck" "${tests[@]}"
fi
tail -3 "$out/tests.log"

# (a) LSH attention at loads that fill a GPU: one run per (dtype, L), so a budget that runs out costs one
# table. Shares divide by the bf16 GEMM peak measured in the same run, for fp32 cells too.
if (( smoke )); then
    # The Triton impl runs through the interpreter on the CPU.
    export TRITON_INTERPRET=1
    lsh_common=(--batch 1 --heads 2 --repeats 1 --in-process --hashes 1 2 --peak-dtype bf16 --threads 2
        --impls chunkformer-sdpa chunkformer-triton reformer-pytorch hf-reformer)
    lsh_runs=("bf16 256 30" "fp32 256 30")
    lsh_shape=(--batch 1 --heads 2)
else
    lsh_common=(--device cuda --batch 4 --heads 8 --repeats 3 --in-process --hashes 1 4 --peak-dtype bf16
        --impls chunkformer-triton chunkformer-sdpa chunkformer-xformers reformer-pytorch hf-reformer)
    lsh_runs=("bf16 16384 25" "bf16 65536 40" "fp32 16384 15" "fp32 65536 25")
    lsh_shape=(--batch 4 --heads 8)
fi
for run in "${lsh_runs[@]}"; do
    read -r dtype length budget <<<"$run"
    step "lsh_${dtype}_${length}" "$budget" "$py" benchmarks/lsh_attention.py "${lsh_common[@]}" --dtype "$dtype" \
        --lengths "$length" --markdown-out "$out/lsh_${dtype}_${length}.md" --json-out "$out/lsh_${dtype}_${length}.json"
done
unset TRITON_INTERPRET
for dtype in bf16 fp32; do
    # One table and one figure per dtype, from the per-length tables.
    cat "$out"/lsh_"$dtype"_*.md >"$out/lsh_$dtype.md" 2>/dev/null
    if [[ -s "$out/lsh_$dtype.md" ]]; then
        "$py" benchmarks/lsh_attention.py --plot-from "$out/lsh_$dtype.md" --plot-out "$out/lsh_$dtype.png" \
            --dtype "$dtype" "${lsh_shape[@]}" \
            >>"$out/lsh_plot.log" 2>&1 || echo "lsh $dtype figure failed (see lsh_plot.log)"
    fi
done

# (b) SCT-S's LSH layer against a ChunkAttention layer over the same 3136-token frames, the LSH layer on the
# block path (sdpa) and on the Triton kernels side by side (automatic selection takes the Triton kernels on
# CUDA once their self-check passes, which the tests step's test_lsh_auto.py asserts).
if (( smoke )); then
    # The Triton rows run through the interpreter, a few programs a second: one frame, 2 heads of 16.
    step lsh_layer 25 env TRITON_INTERPRET=1 "$py" benchmarks/lsh_layer.py --frames 1 --side 14 --dim 32 \
        --heads 2 --hashes 1 2 --dtypes bf16 fp32 --backends sdpa triton --repeats 1 --threads 2 \
        --markdown-out "$out/lsh_layer.md" --json-out "$out/lsh_layer.json"
else
    step lsh_layer 35 "$py" benchmarks/lsh_layer.py --device cuda --frames 64 --side 56 --hashes 1 4 \
        --dtypes bf16 fp32 --backends sdpa triton --repeats 3 --markdown-out "$out/lsh_layer.md" \
        --json-out "$out/lsh_layer.json"
fi

# Every attention layer (SCT's and the zoo's) on 8 frames of 56 x 56 tokens, C 96: a batch of 8 in bf16 on
# the GPU, forward and forward+backward, peak memory; and NeighborhoodAttention3D with its relative position bias.
if (( smoke )); then
    step zoo_layers 15 "$py" benchmarks/zoo_layers.py --smoke --threads 2 --rel-pos-bias \
        --markdown-out "$out/zoo_layers.md"
else
    step zoo_layers 15 "$py" benchmarks/zoo_layers.py --device cuda --dtype bf16 --batch 8 --repeats 5 \
        --rel-pos-bias --markdown-out "$out/zoo_layers.md"
fi

# The model table: a training step (forward + backward + AdamW) under bf16 autocast.
if (( smoke )); then
    models=(--mode train-step --precisions bf16 --repeats 1 --threads 2 --img-size 32 --batch 1)
    step models_eager 20 "$py" benchmarks/models.py "${models[@]}" --models sct_tiny --frames 2 \
        --markdown-out "$out/models_eager.md"
    step models_checkpointing 20 "$py" benchmarks/models.py "${models[@]}" --models sct_tiny --frames 2 \
        --grad-checkpointing --markdown-out "$out/models_checkpointing.md"
    # SCT-S (sct_tiny has no LSH layer), its LSH layers on the Triton kernels through the interpreter.
    step models_triton 25 env TRITON_INTERPRET=1 "$py" benchmarks/models.py "${models[@]}" --models sct_s \
        --frames 1 --backend triton --markdown-out "$out/models_triton.md"
    skip models_compile "torch.compile on the CPU builds C++ kernels for minutes; the GPU run covers it"
else
    models=(--device cuda --in-process --mode train-step --precisions bf16 --repeats 3 --img-size 224)
    step models_eager_8 30 "$py" benchmarks/models.py "${models[@]}" --frames 8 --batch 4 \
        --markdown-out "$out/models_eager_8.md"
    step models_eager_24 30 "$py" benchmarks/models.py "${models[@]}" --frames 24 --batch 2 \
        --markdown-out "$out/models_eager_24.md"
    # The rows above run automatic selection: in eager mode SCT's LSH layers take the Triton kernels once
    # their self-check passes. This one pins the block path (SDPA's kernels) for comparison.
    step models_block 20 "$py" benchmarks/models.py "${models[@]}" --models sct_s --frames 8 --batch 4 \
        --backend sdpa --markdown-out "$out/models_block.md"
    step models_compile 55 "$py" benchmarks/models.py "${models[@]}" --models sct_s --frames 8 --batch 4 \
        --compile --markdown-out "$out/models_compile.md" --json-out "$out/models_compile.json"
    step models_checkpointing 15 "$py" benchmarks/models.py "${models[@]}" --models sct_s --frames 24 \
        --batch 2 --grad-checkpointing --markdown-out "$out/models_checkpointing.md"
fi

# The recipe killed and resumed under torchrun: fp16 (GradScaler) and bf16 on CUDA with nccl.
if (( smoke )); then
    skip "recipe fp16" "fp16 with GradScaler is the CUDA path; the CPU smoke run keeps to bf16 autocast (gloo)"
    step recipe_resume 45 "$py" benchmarks/recipe_resume.py "$out/recipe-runs" --device cpu --size tiny \
        --amp bf16 --timeout 40 --markdown-out "$out/recipe_resume.md"
else
    step recipe_resume 70 "$py" benchmarks/recipe_resume.py "$out/recipe-runs" --device cuda --size small \
        --amp fp16 bf16 --timeout 30 --markdown-out "$out/recipe_resume.md"
fi
grep "^[a-z0-9]*: max abs loss difference" "$out/recipe_resume.log"

# Each target met or missed, from the steps' JSON (a missing measurement reads "not measured").
"$py" benchmarks/gpu_targets.py "$out" --markdown-out "$out/targets.md" >"$out/targets.log" 2>&1 \
    || echo "targets table failed (see targets.log)"
{
    echo "# GPU suite$( ((smoke)) && echo " (--smoke: CPU, toy sizes)")"
    echo
    echo '```'
    cat "$out/environment.log" "$out/timings.txt"
    echo '```'
    for table in targets lsh_bf16 lsh_fp32 lsh_layer zoo_layers models_eager models_eager_8 models_eager_24 \
        models_triton models_block models_compile models_checkpointing recipe_resume; do
        [[ -s "$out/$table.md" ]] && { echo; echo "## $table"; echo; cat "$out/$table.md"; }
    done
} >"$out/summary.md"
echo "suite: $SECONDS s; tables in $out/summary.md"
exit $status
