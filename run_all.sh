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
  (none)     build, then run the main job: the headline study (the four
             offload policies on workloads/suites/headline.json), writing
             results/headline.csv, .json and .md and printing the table
  test       build, then run every test through ctest --output-on-failure

options:
  --build-dir DIR   build directory (default: build)
  --cuda MODE       MOE_WITH_CUDA for the build: AUTO (default), ON or OFF
  --jobs N          parallel build jobs (default: number of cores)
  -h, --help        this text

Both commands first make sure the build dependencies are installed (cmake,
pkg-config, libopenblas-dev, libjansson-dev, libcsv-dev, check): as root the
missing ones are installed with apt-get; otherwise the exact apt-get line is
printed and the script stops.
USAGE
}

cmd=main
build_dir=build
cuda=AUTO
jobs="$(nproc 2>/dev/null || echo 2)"
while [ $# -gt 0 ]; do
  case "$1" in
    test) cmd=test ;;
    -h|--help) usage; exit 0 ;;
    --build-dir) build_dir="${2:?--build-dir needs a value}"; shift ;;
    --cuda) cuda="${2:?--cuda needs AUTO, ON or OFF}"; shift ;;
    --jobs) jobs="${2:?--jobs needs a value}"; shift ;;
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

build() {
  cmake -S . -B "$build_dir" -DMOE_WITH_CUDA="$cuda" >/dev/null
  cmake --build "$build_dir" -j "$jobs"
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
# then the table with the paper's ratios beside ours.  Every figure is
# measured on this machine unless labelled otherwise.
mkdir -p results/runs
start=$(date +%s)
"$build_dir/harness/moebench" sweep headline -o results/headline
{
  echo "# Headline results"
  echo
  echo "Produced by \`./run_all.sh\` on $(uname -m), $(nproc) cores,"
  echo "$(grep -m1 'model name' /proc/cpuinfo 2>/dev/null | cut -d: -f2- | sed 's/^ *//'),"
  echo "$(date -u +%Y-%m-%d). Source: results/headline.csv and results/headline.json."
  echo
  "$build_dir/harness/moebench" report results/headline.csv --paper
} > results/headline.md.tmp
mv results/headline.md.tmp results/headline.md
cat results/headline.md
echo "run_all.sh: headline done in $(( $(date +%s) - start )) s; wrote results/headline.{csv,json,md}"
