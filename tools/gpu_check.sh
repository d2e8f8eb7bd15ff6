#!/usr/bin/env bash
# The GPU check, one command on a machine with one GPU: the `gpu` tests, then the GPU benchmark
# (benchmarks/gpu.py), in under 8 minutes, everything written to one folder:
#
#   tools/gpu_check.sh [OUT]        # OUT defaults to build/gpu_check
#
# OUT/summary.txt     what ran, each step's exit status, and the test counts
# OUT/nvidia-smi.txt  the GPU, its driver and memory before the run
# OUT/versions.txt    python, torch, CUDA, cuDNN, the GPU, torchrec/fbgemm_gpu (or their absence), git
# OUT/pytest.log      the tests, one line each, with skip reasons; OUT/pytest.xml the same as JUnit XML
# OUT/benchmark/      gpu.json (every figure, machine and settings) and gpu.md (the table)
#
# Runs with the python3 on PATH (PYTHON=... to choose another) and the repository on PYTHONPATH:
# no venv, no make, no network. Without torchrec and fbgemm_gpu (as on the lent H200 machines) the
# backbone tests run and the TorchRec tests are skipped, naming what is missing. The benchmark runs
# even when tests fail; the script exits non-zero when any step failed. A dry run on a machine
# without a GPU (the tests skip, the benchmark runs on CPU):
#   PYTHON=.venv/bin/python BENCH_ARGS="--device cpu --steps 1" tools/gpu_check.sh build/dry
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-build/gpu_check}
PYTHON=${PYTHON:-python3}
BUDGET_S=${BUDGET_S:-465}  # for the whole run; the benchmark gets what the tests leave
TESTS_S=${TESTS_S:-300}
read -r -a BENCH_ARGS <<<"${BENCH_ARGS:-}"  # more flags for benchmarks/gpu.py (a dry run: --device cpu ...)
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
failed=0
: >"$OUT/summary.txt"

say() { echo "[gpu_check $(date -u +%H:%M:%S)] $*" | tee -a "$OUT/summary.txt"; }

# step NAME SECONDS LOGFILE COMMAND...: runs COMMAND with a time limit, output to LOGFILE; records
# its exit status (124: out of time) and never stops the script.
step() {
    local name=$1 limit=$2 logfile=$3 rc=0
    shift 3
    say "$name: start (limit ${limit}s): $*"
    timeout --kill-after=15 "$limit" "$@" >"$logfile" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        say "$name: ok"
    else
        failed=1
        say "$name: FAILED, exit $rc$([ "$rc" -eq 124 ] && echo ' (out of time)'); see $logfile"
        tail -n 20 "$logfile" | sed 's/^/    /' | tee -a "$OUT/summary.txt"
    fi
}

say "output: $OUT"
{ nvidia-smi || echo "nvidia-smi: exit $?"; } >"$OUT/nvidia-smi.txt" 2>&1
step versions 60 "$OUT/versions.txt" "$PYTHON" - <<'PY'
import importlib.metadata as md, platform, subprocess, sys
import torch
print("python", sys.version.split()[0], platform.platform())
print("torch", torch.__version__, "cuda", torch.version.cuda, "cudnn", torch.backends.cudnn.version())
print("cuda available", torch.cuda.is_available(), "devices", torch.cuda.device_count())
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}", p.name, f"{p.total_memory / 2**30:.1f} GiB", f"capability {p.major}.{p.minor}")
for name in ("torchrec", "fbgemm-gpu", "fbgemm-gpu-cpu", "numpy", "pyarrow", "scikit-learn", "pytest"):
    try:
        print(name, md.version(name))
    except md.PackageNotFoundError:
        print(name, "absent")
git = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
print("git", git.stdout.strip() or "unknown (no git here)")
PY

# With torchrec importable every gpu-marked test in the suite is collected; without it only
# tests/gpu (the other test modules import torchrec).
TESTS=(tests/gpu)
if "$PYTHON" -c "import torchrec" >/dev/null 2>&1; then TESTS=(tests); fi
step tests "$TESTS_S" "$OUT/pytest.log" "$PYTHON" -m pytest -m gpu -v -p no:cacheprovider \
    --durations=15 --junitxml="$OUT/pytest.xml" "${TESTS[@]}"
"$PYTHON" - "$OUT/pytest.xml" <<'PY' | tee -a "$OUT/summary.txt" || true
import sys, xml.etree.ElementTree as ET
try:
    suite = ET.parse(sys.argv[1]).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    n = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    print(f"tests: {n['tests']} collected, {n['tests'] - n['failures'] - n['errors'] - n['skipped']} passed, "
          f"{n['failures']} failed, {n['errors']} errors, {n['skipped']} skipped")
    if n["tests"] == n["skipped"]:
        print("tests: NOTE every test was skipped (no GPU seen?): nothing was checked on a GPU")
except Exception as e:
    print(f"tests: no JUnit XML to count ({e})")
PY

left=$((BUDGET_S - SECONDS))
if [ "$left" -lt 60 ]; then
    failed=1
    say "benchmark: NOT RUN, ${left}s left of ${BUDGET_S}s"
else
    step benchmark "$left" "$OUT/benchmark.log" "$PYTHON" -m benchmarks.gpu --out "$OUT/benchmark" \
        ${BENCH_ARGS[@]+"${BENCH_ARGS[@]}"}
fi
say "done in ${SECONDS}s: $([ "$failed" -eq 0 ] && echo 'everything passed' || echo 'SOMETHING FAILED (above)')"
exit "$failed"
