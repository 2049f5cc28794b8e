#!/usr/bin/env bash
# The check to run whenever an NVIDIA GPU is available, on a machine with the project installed
# (the Docker image, or `make test`'s .venv with a CUDA build of torch):
#   1. the tests marked `gpu` (pytest -m gpu), one process, on the GPU: CUDA equals the CPU, the paged
#      attention path (block tables, decode groups, prompt chunks) equals dense attention, chunked
#      prefill, preemption and prefix-cache hits give the tokens of a solo run, bf16 and bitsandbytes;
#   2. the offline engine benchmark (bench/engine_bench.py, the paged engine) in bfloat16 and with
#      bitsandbytes 4-bit;
#   3. the serving benchmark through HTTP (bench/serve_bench.py, our server only: the peer's venv
#      cannot be built without the network) on the realistic demo, built if missing.
# Writes results.md (what ran, what passed, the numbers), one log per step and the benchmark's
# JSON and plot (bench-bf16/, bench-4bit/) into $OUT if set, else bench/results/gpu-check-<UTC time>/. Exit status: 0 every step passed, 1 a step failed or
# could not run, 2 no usable NVIDIA GPU (results.md says why).
# Settings (environment): PYTHON (default .venv/bin/python if present, else python3),
# NVIDIA_SMI (default nvidia-smi), ENGINE_BENCH_ARGS (extra flags for both benchmark runs),
# GPU_CHECK_SKIP_BENCH=1 (tests only), REALISTIC (demo checkpoint folder, default .demo/realistic).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
NVIDIA_SMI=${NVIDIA_SMI:-nvidia-smi}
OUT_DIR=${OUT:-bench/results/gpu-check-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT_DIR" || exit 1
RESULTS=$OUT_DIR/results.md
status=0

say() { printf '%s\n' "$*" | tee -a "$RESULTS"; }
fail() { say "- FAILED: $*"; status=1; }

: > "$RESULTS"
say "# llava-serve GPU check"
say ""
say "- date (UTC): $(date -u +%Y-%m-%dT%H:%M:%SZ)"
say "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"

if ! "$NVIDIA_SMI" -L > "$OUT_DIR/nvidia-smi.txt" 2>&1; then
  say "- NO GPU: \`$NVIDIA_SMI -L\` failed; nothing was run (see nvidia-smi.txt)"
  exit 2
fi
say "- GPUs: $(paste -sd ';' "$OUT_DIR/nvidia-smi.txt")"
if ! torch_info=$("$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA"
print(torch.__version__, "CUDA", torch.version.cuda, torch.cuda.get_device_name(0))' 2>&1); then
  say "- NO GPU for torch: $PYTHON's torch cannot use CUDA (a CPU build?); nothing was run"
  say "  ($(tail -n 1 <<< "$torch_info"))"
  exit 2
fi
say "- torch: $torch_info"

say ""
say "## Tests marked gpu"
"$PYTHON" -m pytest -m gpu -p no:cacheprovider -q -rA --junitxml="$OUT_DIR/gpu-tests.xml" \
  > "$OUT_DIR/gpu-tests.log" 2>&1
rc=$?
summary=$(tail -n 1 "$OUT_DIR/gpu-tests.log")
case $rc in
  0) say "- passed: $summary" ;;
  5) say "- no test is marked gpu yet: nothing ran ($summary)" ;;
  *) fail "pytest -m gpu exited $rc: $summary (gpu-tests.log)" ;;
esac

run_bench() {  # name, then the benchmark's flags
  local name=$1; shift
  say ""
  say "## Engine benchmark: $name"
  if [[ ! -f bench/engine_bench.py ]]; then
    fail "bench/engine_bench.py is missing"
    return
  fi
  local usage flag
  usage=$("$PYTHON" bench/engine_bench.py --help 2>&1)
  for flag in "$@"; do
    if [[ $flag == --* ]] && ! grep -q -- "$flag\b" <<< "$usage"; then
      fail "bench/engine_bench.py has no $flag flag: the $name run needs it"
      return
    fi
  done
  # shellcheck disable=SC2086  # ENGINE_BENCH_ARGS is a list of flags, split on purpose
  if "$PYTHON" bench/engine_bench.py "$@" --out "$OUT_DIR/bench-$name" ${ENGINE_BENCH_ARGS:-} \
      > "$OUT_DIR/bench-$name.log" 2>&1; then
    say "- command: \`$PYTHON bench/engine_bench.py $* --out $OUT_DIR/bench-$name ${ENGINE_BENCH_ARGS:-}\`"
    say '```'
    tail -n 40 "$OUT_DIR/bench-$name.log" | tee -a "$RESULTS"
    say '```'
  else
    fail "engine_bench.py $* exited $? (last lines of bench-$name.log below)"
    tail -n 15 "$OUT_DIR/bench-$name.log" | sed 's/^/    /' | tee -a "$RESULTS"
  fi
}

if [[ "${GPU_CHECK_SKIP_BENCH:-0}" == 1 ]]; then
  say ""
  say "## Engine benchmark: skipped (GPU_CHECK_SKIP_BENCH=1)"
else
  run_bench bf16 --device cuda --dtype bfloat16
  run_bench 4bit --device cuda --dtype bfloat16 --quantization bitsandbytes-4bit
  say ""
  say "## Serving benchmark (HTTP, paged engine, realistic demo)"
  REALISTIC=${REALISTIC:-.demo/realistic}
  if [[ ! -f $REALISTIC/config.json ]] && ! "$PYTHON" -m server.cli make-demo --size realistic --out "$REALISTIC" \
      > "$OUT_DIR/make-demo.log" 2>&1; then
    fail "could not build the realistic demo (make-demo.log)"
  elif "$PYTHON" bench/serve_bench.py --model "$REALISTIC" --servers ours --device cuda --dtype bfloat16 \
      --text-levels 1,8,16,32 --image-levels 1,4,8,16 --out "$OUT_DIR/serve" > "$OUT_DIR/serve.log" 2>&1; then
    say '```'
    tail -n 30 "$OUT_DIR/serve.log" | tee -a "$RESULTS"
    say '```'
  else
    fail "serve_bench.py exited $? (last lines of serve.log below)"
    tail -n 15 "$OUT_DIR/serve.log" | sed 's/^/    /' | tee -a "$RESULTS"
  fi
fi

say ""
if [[ $status == 0 ]]; then say "RESULT: every step passed"; else say "RESULT: some step FAILED"; fi
say "(results in $OUT_DIR)"
exit $status
