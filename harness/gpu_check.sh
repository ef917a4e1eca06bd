#!/usr/bin/env bash
# gpu_check.sh: the checks that need a GPU, as one script for a lent GPU
# machine.  Builds with CUDA, runs the whole test suite (where a device is
# present the backend conformance suite runs the cuda backend too, the
# smoke test runs `generate --backend cuda`, and the gpu-labelled tests
# compare cuda with cpu op by op, whole models, policies bit-identical,
# peak = plan), runs the headline
# suite with the cuda backend and the paper-scale suite (and the same suite
# modeled on the h200 profile, to validate the cost model), measures the
# host-to-device copy bandwidth, and writes CSV, JSON and a short table to
# $OUT (default: results/runs/gpu-check).  Budget: 8 minutes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-results/runs/gpu-check}"
mkdir -p "$OUT"
log() { echo "== $(date -u +%H:%M:%S) $*" | tee -a "$OUT/summary.txt"; }
start=$(date +%s)

log "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current \
  --format=csv 2>&1 | tee -a "$OUT/summary.txt"

log "build (MOE_WITH_CUDA=ON, sm_90)"
./run_all.sh --help >/dev/null
if ! { cmake -S . -B build-gpu -DMOE_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 >"$OUT/cmake.log" 2>&1 &&
       cmake --build build-gpu -j "$(nproc)" >"$OUT/build.log" 2>&1; }; then
  log "BUILD FAILED (see build.log)"; tail -30 "$OUT/build.log"; exit 1
fi
bin=build-gpu/harness/moebench
$bin list backends | tee -a "$OUT/summary.txt"

log "all tests (the cuda parts run here)"
(cd build-gpu && timeout 240 ctest --output-on-failure -j 8) >"$OUT/gpu-tests.log" 2>&1
gpu_rc=$?
tail -15 "$OUT/gpu-tests.log" | tee -a "$OUT/summary.txt"

log "host-to-device bandwidth and the four policies (switch-base-8, cuda, 3 reps)"
timeout 180 $bin bench-policies --preset switch-base-8 --backend cuda --reps 3 \
  >"$OUT/bench-policies.md" 2>"$OUT/bench-policies.err"
tail -12 "$OUT/bench-policies.md" | tee -a "$OUT/summary.txt"

log "headline suite on cuda"
sed -e 's/"backend": "auto"/"backend": "cuda"/' -e '/"link_ratio"/d' -e '/"link_gbps"/d' workloads/suites/headline.json >"$OUT/headline-suite.json"
timeout 150 $bin sweep "$OUT/headline-suite.json" -o "$OUT/headline-cuda" --quiet
$bin report "$OUT/headline-cuda.csv" --paper >"$OUT/headline-cuda.md" && cat "$OUT/headline-cuda.md" | tee -a "$OUT/summary.txt"

log "paper scale (switch-base-128, encoder-decoder, f32, 256 input + 32 tokens)"
timeout 200 $bin sweep gpu-paper -o "$OUT/paper-cuda" --quiet
$bin report "$OUT/paper-cuda.csv" --paper >"$OUT/paper-cuda.md" && cat "$OUT/paper-cuda.md" | tee -a "$OUT/summary.txt"

log "the cost model against it: the same suite MODELED on the h200 profile (sim backend)"
sed -e 's/"backend": "cuda"/"backend": "sim", "hardware": "h200"/' workloads/suites/gpu-paper.json >"$OUT/paper-sim-suite.json"
$bin sweep "$OUT/paper-sim-suite.json" -o "$OUT/paper-sim" --quiet
{ echo "measured on this GPU:"; $bin report "$OUT/paper-cuda.csv" --summary
  echo "MODELED on workloads/hardware/h200.json:"; $bin report "$OUT/paper-sim.csv" --summary; } | tee -a "$OUT/summary.txt"

log "done in $(( $(date +%s) - start )) s; gpu tests rc=$gpu_rc"
exit $gpu_rc
