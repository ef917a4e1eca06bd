#!/usr/bin/env bash
# run_all.sh: the project's two entry points.
#   ./run_all.sh          build, then run the main job (see --help)
#   ./run_all.sh test     build, then run the whole test suite through ctest
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

usage() {
  cat <<'USAGE'
usage: ./run_all.sh [COMMAND] [options]

commands:
  (none)     build, then run the main job: the headline study (the
             paper's four offload policies, speculative pre-gating and
             the host-compute class on workloads/suites/headline.json,
             at capacity and in 1 GiB), writing
             results/runs/headline.csv, .json and .md, printing the table
             and comparing it with the committed reference run
             (results/reference/headline.*, which it never touches), and
             drawing results/runs/headline.png (with gnuplot); it
             leads with the regime map (moebench regime: pregated's ratios
             as copy / compute varies, measured and MODELED,
             results/runs/regime.*); then
             the quality table on the trained models (workloads/trained,
             results/runs/quality.*); then, MODELED on hardware profiles
             with the sim backend, seven Switch models (the paper's five and our
             Base-16 and Base-32) on the
             A100 profile, a what-if table of today's MoE models on the
             H200 profile, the host-compute class (measured on this
             machine, MODELED on the H200 profile, and the crossover
             figure), and one decode step per policy as a picture
             (results/runs/paper-modeled.*, whatif-h200.*,
             whatif-host-h200.*, crossover.*, step-*.svg)
  test       build, then run every test through ctest --output-on-failure

options:
  --build-dir DIR   build directory (default: build)
  --cuda MODE       MOE_WITH_CUDA for the build: AUTO (default), ON or OFF
  --jobs N          parallel build jobs (default: number of cores)
  --werror          treat compiler warnings as errors (MOE_WERROR=ON; CI and
                    developers use it; off by default so that a newer
                    compiler's new warning cannot stop a user's build)
  --report-only     main job: rebuild the page from the last run's CSV
                    (results/runs/headline.csv) without running the suite
  -h, --help        this text

Both commands first make sure the build dependencies are installed (cmake,
pkg-config, libopenblas-dev, libjansson-dev, libcsv-dev, check, and
gnuplot-nox for the figure): as root the missing ones are installed with
apt-get; otherwise the exact apt-get line is printed and the script stops
(a missing gnuplot only skips the figure).
USAGE
}

cmd=main
report_only=0
build_dir=build
cuda=AUTO
werror=OFF
jobs="$(nproc 2>/dev/null || echo 2)"
while [ $# -gt 0 ]; do
  case "$1" in
    test) cmd=test ;;
    -h|--help) usage; exit 0 ;;
    --build-dir) build_dir="${2:?--build-dir needs a value}"; shift ;;
    --cuda) cuda="${2:?--cuda needs AUTO, ON or OFF}"; shift ;;
    --jobs) jobs="${2:?--jobs needs a value}"; shift ;;
    --report-only) report_only=1 ;;
    --werror) werror=ON ;;
    *) echo "run_all.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
  shift
done

ensure_deps() {
  local missing=()
  command -v cmake >/dev/null 2>&1 || missing+=(cmake)
  command -v cc >/dev/null 2>&1 || missing+=(gcc)
  command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
  local pkg
  for pkg in libopenblas-dev libjansson-dev libcsv-dev check; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
  done
  # gnuplot draws the headline figure; without it (and without root to
  # install it) the figure is skipped with a note, nothing else changes
  if ! command -v gnuplot >/dev/null 2>&1; then
    if [ "$(id -u)" -eq 0 ]; then missing+=(gnuplot-nox)
    else echo "run_all.sh: gnuplot is not installed (apt-get install gnuplot-nox): no figure" >&2; fi
  fi
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "run_all.sh: missing build dependencies; install them with:" >&2
    echo "  sudo apt-get update && sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
  echo "run_all.sh: installing ${missing[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q "${missing[@]}" >/dev/null 2>&1 ||
    { apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null; }
}

# A short build summary; the full log goes to BUILD/build.log (its tail is
# printed when the build fails).
build() {
  mkdir -p "$build_dir"
  local log="$build_dir/build.log" t0
  t0=$(date +%s)
  if ! { cmake -S . -B "$build_dir" -DMOE_WITH_CUDA="$cuda" -DMOE_WERROR="$werror" && cmake --build "$build_dir" -j "$jobs"; } >"$log" 2>&1; then
    tail -40 "$log" >&2
    echo "run_all.sh: the build failed (full log: $log)" >&2
    exit 1
  fi
  echo "run_all.sh: built in $build_dir in $(( $(date +%s) - t0 )) s ($(grep -m1 'moe: CUDA backend' "$log" | sed 's/.*moe: //'); log: $log)"
}

ensure_deps
build

if [ "$cmd" = test ]; then
  cd "$build_dir"
  exec ctest --output-on-failure -j "$jobs"
fi

# Main job: the headline study.  The four policies on the headline suite
# (workloads/suites/headline.json) on the best backend available (cuda when
# a GPU backend can run, else the cpu backend with its emulated device),
# then the page (results/runs/headline.md): what was measured and how, the
# table with the paper's ratios, and the differences from the committed
# reference run.  Every figure is measured on this machine unless labelled.
mkdir -p results/runs
start=$(date +%s)

# A modeled suite's summary table (sweeping it unless --report-only finds
# the last run's file).
modeled_table() {
  if [ "$report_only" != 1 ] || [ ! -f "results/runs/$1.csv" ]; then
    "$bin" sweep "$1" -o "results/runs/$1" --quiet >/dev/null
  fi
  "$bin" report "results/runs/$1.csv" --summary
}
bin="$build_dir/harness/moebench"
out=results/runs/headline
# The regime map first: where pre-gating can win, measured and MODELED
# (moebench regime; docs/PERFORMANCE.md derives it).
regime=results/runs/regime
if [ "$report_only" != 1 ] || [ ! -f "$regime.md" ]; then
  fig=()
  command -v gnuplot >/dev/null 2>&1 && fig=(--figure "$regime.png")
  "$bin" regime -o "$regime" "${fig[@]}" > "$regime.md.tmp"
  mv "$regime.md.tmp" "$regime.md"
fi
if [ "$report_only" = 1 ]; then
  [ -f "$out.csv" ] || { echo "run_all.sh: no $out.csv to report on; run ./run_all.sh first" >&2; exit 1; }
else
  "$bin" sweep headline -o "$out"
fi
{
  echo "# Headline results"
  echo
  echo "## The regime map"
  echo
  cat <<'REGIME'
How much copying pre-gating can hide depends on one number, R = one
expert's copy time / one MoE block window's compute. The map below sweeps
R on Switch-Base-8 (batch 1): measured on the cpu backend (its emulated
link capped so one copy takes R windows of a gpu-only warm-up) and MODELED
on the sim backend (the A100 profile with its link scaled the same way),
each beside the regime model (engine/include/moe/regime.h; docs/PERFORMANCE.md
derives it and the band of R that the paper's figures allow: 0.72 with a
free encoder to about 1.07 with the artifact's on-demand encoder). The
figure's flat dashed line is host-compute, MODELED: it copies nothing, so
R does not move it (docs/POLICIES.md).
REGIME
  echo
  sed '1,2d' "$regime.md"
  [ -f "$regime.png" ] && { echo; echo "Figure: $regime.png"; }
  echo
  echo "## The headline table at one R (0.72, the low end of the paper's band)"
  echo
  echo "Produced by \`./run_all.sh\` on $(uname -m), $(nproc) cores,"
  echo "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'),"
  echo "$(date -u +%Y-%m-%d). Source: $out.csv and $out.json."
  cat <<'ABOUT'

What was measured, and what the figures mean:

- Model: `switch-base-8` (workloads/models), the shapes of the paper's
  smallest model, google/switch-base-8: an encoder-decoder Switch
  Transformer, 12 encoder + 12 decoder layers with an MoE block in every
  other one (6 + 6 blocks), 8 experts of 18.9 MB each (f32, wi + wo), top-1
  with expert capacity 64, d_model 768, d_ff 3072, relative-position
  buckets; 2.6 GB of weights, synthetic (random, seed 20) with a pre-gate
  drawn like the next block's router: it is not a trained model. The
  engine runs Hugging Face Switch checkpoints too (tests/fixtures has two,
  checked against transformers); this one was chosen because the paper
  measures it and it fits this 2-core machine's time budget (the larger
  Switch-Base models differ only in experts per block, and their weights
  would not fit in this machine's memory past Switch-Base-64).
- Workload: batch 1, 64 random encoder input ids, 64 generated tokens
  (greedy from decoder_start_token_id, EOS ignored; the prefill is the
  encoder plus the first decoder step, as the paper counts it); 1 warm-up
  and 3 measured repetitions; medians, and the spread (max - min over the
  median) is in the CSV's `rel_spread` column.
- Device: on the cpu backend the "device" is a separate memory arena of
  this machine, and "budget = capacity" means the budget is this machine's
  physical memory: every policy fits, so the table compares speed and the
  memory each policy needs, not out-of-memory failures.
- Link: host-to-device copies are emulated by a copy thread whose cap is
  set by a ratio, not a fixed speed: a gpu-only warm-up measures how long
  one decoder MoE block and the layers up to the next compute on this
  machine (the window a pre-gated copy hides behind), and the cap is set
  so that one expert's copy takes 0.72 times that (the row's
  `link_gbps_derived` column has the cap it gave here). So the table's
  ratios mean the same on every machine, fast or slow, quiet or noisy.
  0.72 is the low end of the band of ratios the paper's own
  Switch-Large-128 figures allow (0.72 with a free encoder to about 1.07
  with the artifact's on-demand encoder; the regime map above and
  docs/PERFORMANCE.md derive it; both ends give back the paper's
  pregated throughput, so the figures do not pin it down). The A100
  profile's roofline plus its estimated overheads (modeled below) gives a
  much higher ratio for the same model, printed after the table: the
  paper's software computes far slower than that, so in its system copies
  are the smaller part.
- pregated-spec: pregated's copies with conventional routing (its
  outputs are gpu-only's bit for bit); wrong guesses are fetched when
  needed, and the first MoE block of each stack is predicted from its
  layer input.
- Token match for pregated: pregated routing uses the pre-gate's choice as
  the routing. The paper fine-tunes the model so that this keeps its
  quality; this model is random and not fine-tuned, so its pregated tokens
  may differ from gpu-only's, and the token match says how often they agree by
  chance, not the quality of a pre-gated model. Conventional routing (the
  other policies) matches gpu-only bit for bit.
- The paper's figures (workloads/paper/pregated-moe.json, the one place
  they live; `moebench list paper` prints them with their sources):
ABOUT
  "$bin" list paper | sed '1d; /^quality_/d' | tr '\t' '|' |
    sed 's/^\([^|]*\)|\([^|]*\)|\(.*\)$/  - \1: \2 (\3)/'
  echo
  "$bin" report "$out.csv" --paper
  echo
  a100=$("$bin" bench-policies --preset switch-base-8 --backend sim --hardware a100-80g-pcie4 \
           --policies gpu-only --reps 1 --prompt-len 64 --gen-len 64 2>/dev/null |
         sed -n 's/.*copy\/compute ratio per block \([0-9.]*\).*/\1/p')
  echo "Link ratio used: 0.72 (the low end of the band the paper's Switch-Large-128 figures allow). The"
  echo "A100 PCIe4 profile's roofline gives ${a100:-?} for this model and workload (MODELED: one"
  echo "expert's copy over 25 GB/s against the modeled compute of a decoder MoE block window);"
  echo "the paper-scale tables below show the policies in that regime."
  if command -v gnuplot >/dev/null 2>&1 && "$bin" report "$out.csv" --figure results/runs/headline.png >/dev/null; then
    echo
    echo "Figure: results/runs/headline.png (throughput and peak memory per policy, pregated's ratios"
    echo "next to the paper's)."
  fi
  echo
  echo "## Compared with the committed reference run (results/reference/headline.csv)"
  echo
  det=$("$bin" compare results/reference/headline.csv "$out.csv" --deterministic-only 2>&1 | tail -1) || true
  all=$("$bin" compare results/reference/headline.csv "$out.csv" --allow-device-change 2>&1) || true
  echo "- counted figures (bytes, fetches, slots, tokens; must match): $det"
  echo "- all figures (timings move with the machine; flagged when worse by more than 25%"
  echo "  and by more than the rows' own spread; rows from another machine compare as"
  echo "  ratios to gpu-only, their times summarised): $(echo "$all" | tail -1)"
  speed=$(echo "$all" | grep '^Another device' || true)
  [ -n "$speed" ] && echo "- $speed"
  flagged=$(echo "$all" | grep -E '[|] (REGRESSION|noise|MISSING) [|]' || true)
  if [ -n "$flagged" ]; then
    echo
    echo "| row | metric | reference | this run | change | verdict |"
    echo "|---|---|---|---|---|---|"
    echo "$flagged"
  fi
  echo
  echo "## Quality on a trained model (workloads/trained)"
  echo
  cat <<'QUALITY'
A tiny Mixtral-layout MoE (3.4 M parameters, 4 layers, 8 experts, top-2,
byte tokens) trained here on the Python 3.11 documentation (Debian's
python3.11-doc), then trained further for the same number of steps
conventionally (the control model) and with pre-gates (the paper's recipe,
scaled down; tools/train/train_moe.py, docs/QUALITY.md). Held-out text:
windows of the documentation's tutorial (docs/QUALITY.md says which). Every figure is measured by the engine; the
first row is the reference for the changes.

QUALITY
  if [ "$report_only" = 1 ] && [ -f results/runs/quality.md ]; then
    cat results/runs/quality.md
  else
    "$bin" eval --suite workloads/trained/quality.json -o results/runs/quality | tee results/runs/quality.md
  fi
  echo
  echo "The paper's quality table (Switch Transformers fine-tuned with pre-gates; from"
  echo "workloads/paper/pregated-moe.json):"
  echo
  "$bin" list paper | tr '\t' '|' | sed -n 's/^quality_\([^|]*\)|\([^|]*\)|\([^;]*\);.*$/  - \3, \1: \2/p'
  cat <<'PAPER'

Its claim: fine-tuning with pre-gates keeps the model's quality. Compare
the direction (pre-gated fine-tuned against conventional, and against
zero-shot pre-gating), not the numbers: different models, tasks and
metrics.
PAPER
  echo
  echo "## Paper scale, MODELED (the sim backend on hardware profiles)"
  echo
  cat <<'MODELED'
Every figure in this section is MODELED, not measured: the engine, the
four policies and the expert store run unchanged on the sim backend
(engine/backends/sim), which does no math and holds no weights, and an
operation's time is its roofline on a hardware profile plus fixed
overheads, copies and compute on two streams ordered by events
(engine/include/moe/cost.h). Peak memory and bytes copied are the engine's
exact accounting. Routing is drawn uniformly (seeded), and every pre-gate
prediction is right. docs/PERFORMANCE.md has the model's validation
against measured runs on this machine.

Seven Switch models (the five the paper evaluates: Base-8, -64, -128, -256
and Large-128; Base-16 and Base-32 are ours, to fill the line), f32, batch
1, 256 random input ids and
256 generated tokens, on the A100 80 GB PCIe Gen4 profile
(workloads/hardware/a100-80g-pcie4.json: 1,935 GB/s, 19.5 TFLOP/s f32,
25 GB/s pinned host link):

MODELED
  modeled_table paper-modeled
  echo
  echo "How sure these figures are: the profile's launch overhead and transfer latency are"
  echo "estimates (workloads/hardware/a100-80g-pcie4.json's sources say so). The same Switch-Base-8"
  echo "decode, MODELED at other values of the two (moebench sensitivity):"
  echo
  "$bin" sensitivity | sed '1,2d'
  echo
  echo "What if: today's open MoE models (bf16, same workload) on the H200 profile"
  echo "(workloads/hardware/h200.json: 141 GB, 4.8 TB/s, PCIe Gen5 host link), MODELED:"
  echo
  modeled_table whatif-h200
  echo
  echo "## Experts computed where they live (the host-compute class; docs/POLICIES.md)"
  echo
  cat <<'HOST'
host-compute (llama.cpp's --n-cpu-moe), fiddler (Fiddler's copy-or-compute
choice) and pregated-hybrid (new: the pre-gate's predictions copied ahead
when the copy pays, anything else computed on the host, never fetched)
keep the experts that do not fit in host memory and compute them there.
Measured first, from the headline study above: Switch-Base-8 on this
machine's cpu backend, the link at R = 0.72, the emulated host a second
math thread capped at 12 GB/s, at capacity (where the class keeps every
expert resident: the same work as gpu-only) and in a 1 GiB budget (about
20 of 96 experts resident); what the emulation can and cannot show:
docs/POLICIES.md:

HOST
  echo "Load average (1, 5, 15 min) when the page was written: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null)."
  echo
  "$bin" report "$out.csv" --host
  echo
  echo "The same class MODELED on the H200 profile and its host (bf16, 32 + 16 tokens, batch 1"
  echo "to 64, a 48 GiB budget and capacity; results/runs/whatif-host-h200.*):"
  echo
  if [ "$report_only" != 1 ] || [ ! -f results/runs/whatif-host-h200.csv ]; then
    "$bin" sweep whatif-host-h200 -o results/runs/whatif-host-h200 --quiet >/dev/null
  fi
  "$bin" report results/runs/whatif-host-h200.csv --host
  echo
  xo=results/runs/crossover
  xfig=()
  command -v gnuplot >/dev/null 2>&1 && xfig=(--figure "$xo.png")
  "$bin" crossover -o "$xo" "${xfig[@]}" 2>/dev/null | sed '1s/^## /### /'
  [ -f "$xo.png" ] && { echo; echo "Figure: $xo.png (tokens/s against host bandwidth and batch, MODELED)"; }
  echo
  echo "One decode step of Switch-Base-128 per policy on the A100 profile, MODELED"
  echo "(results/runs/step-POLICY.svg: compute above, copies below, waits in red):"
  echo
  for pol in gpu-only ondemand prefetch-all pregated; do
    if "$bin" run --preset switch-base-128 --backend sim --hardware a100-80g-pcie4 --policy "$pol" \
         --prompt-len 256 --gen-len 8 --trace "results/runs/step-$pol.trace.json" >/dev/null &&
       "$bin" timeline "results/runs/step-$pol.trace.json" -o "results/runs/step-$pol.svg" >/dev/null; then
      echo "- $pol: results/runs/step-$pol.svg"
    fi
  done
  echo
  echo "## Reading the tables together"
  echo
  cat <<'CONCLUSION'
The measured headline table, the MODELED A100 table and the H200 what-if
are three points on the regime map at the top of this page, not three
answers to one question. The headline sets R to 0.72, inside the band the
paper's own figures allow, where pre-gating hides nearly every copy but
the first block's; measured here it stays below the model's figure
there because the cpu backend's copy thread takes memory bandwidth from
compute (the map's measured points; docs/PERFORMANCE.md). The A100 profile
computes a Switch-Base block far faster than the paper's software did, so
its own R is about 2.6: copies cannot hide and pregated falls to about a
third of gpu-only, still ahead of ondemand (the map at R = 2.6 says the
same); how far depends on the estimated launch overhead (the sensitivity
table). Today's large MoE models on the H200 profile have R far above 4:
one token's experts take longer to copy than to compute many times over,
every offload policy is bound by the link, and pre-gating gains little
over ondemand; fewer bytes per token (caches, batching, or computing
experts where they live) is what moves those rows.
CONCLUSION
} > "$out.md.tmp"
mv "$out.md.tmp" "$out.md"
cat "$out.md"
echo "run_all.sh: headline done in $(( $(date +%s) - start )) s; wrote $out.{csv,json,md}"
