#!/usr/bin/env bash
# gpu_check.sh: every check that needs a GPU, as ONE prepared run for a lent
# GPU machine (docs/GPU.md).  The machine has CUDA, CMake and Python but none
# of the build's C libraries and no package registry: they come as .deb files
# in a bundle (tools/gpu_deps.sh makes it, default .gpu-deps), unpacked into a
# private prefix under the build directory and used from there only.
#
# Steps, in order; each has its own time cap, and none starts unless it can
# finish before the global deadline (default 480 s) without eating the caps
# of the required steps after it:
#   a  machine facts; the bundle checked, unpacked and every header and
#      library named that is missing; tools/cuda_facts.cu (fork after CUDA
#      init, cudaEventQuery's last error, pinned and pageable copy bandwidth)
#   b  a driver memory sampler (nvidia-smi, every 200 ms) for the whole run
#   c  the CUDA build (moebench, test_cuda, the conformance suites
#      test_backend_conformance, test_backend_math, test_backend_table) against
#      the bundle only, and the proof of it (link lines, compiler dependency
#      files, ldd)
#   d  a tiny generate on cuda (stop here if it fails)
#   e  ctest: cuda, cuda_switches and the conformance suites
#      (backend_conformance, _math, _table, _host_stream, _urgent)
#   o  overtakable copies (MOE_CUDA_OVERTAKE=1, off by default until this
#      step has measured them): the conformance, host-stream and urgent-copy
#      suites' cuda cases with them, then pregated and pregated-spec on
#      Switch-Base-8 with copies in issue order and overtaking, in turns
#   p  CUDA graph mode (MOE_CUDA_GRAPHS=1, off by default until this step
#      has measured it): the same suites' cuda cases captured, the same
#      tokens with it off and on, its counts beside the gate's model, and
#      the same turns as o with it off and on
#   f  compute-sanitizer memcheck and racecheck on the conformance suites
#   g  moebench calibrate on cuda: a measured H200 profile, side by side with
#      workloads/hardware/h200.json
#   h  moebench validate on cuda (the cost model against measured runs)
#   i  the headline suite on cuda, its report --paper, and the same suite
#      modeled on the h200 profile (sim) beside it
#   j  Switch-Base-64, then Switch-Base-128 (the paper's workload, short)
#   k  the rest of the paper's models, while time remains
# Required: a, c, d, e, g, i (the exit status is 1 when one of them failed
# or could not run); wanted: b, h, o, p, j; optional: f, k.
#
# Writes $OUT/summary.txt (a header, then `PASS|FAIL|SKIP <step> <seconds>s
# <figures>` per step) and $OUT/gpu-check.tar.gz (every log, CSV, JSON and
# MD), plus a few of those files loose for a quick look: at most 8 files.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: harness/gpu_check.sh [--out DIR] [--deadline SECONDS] [--bundle DIR]
                            [--build DIR] [--commit SHA] [--rehearse]
       harness/gpu_check.sh --check-bundle [--bundle DIR]

One prepared run of every GPU check (docs/GPU.md): machine facts and the
dependency bundle, a CUDA probe, the CUDA build against the bundle only,
generate, the cuda and conformance tests, compute-sanitizer, calibrate,
validate, the headline suite and paper-scale models on cuda.

  --out DIR          results (default: $OUT, else results/runs/gpu-check):
                     summary.txt, gpu-check.tar.gz and a few loose files (<= 8)
  --deadline S       global deadline in seconds (default 480); a step starts
                     only if its cap fits in the time left
  --bundle DIR       the dependency bundle (default .gpu-deps; tools/gpu_deps.sh)
  --build DIR        build directory (default build-gpu; build-rehearse with
                     --rehearse); the bundle is unpacked into DIR/deps-prefix
  --commit SHA       the source commit, for the summary when the tree has no .git
  --rehearse         no GPU: run every step that needs none (bundle, build with
                     nvcc, cuda_facts compiled, summary, archive, caps) and mark
                     the GPU steps SKIP; the exit status is the real run's
  --check-bundle     only verify the bundle (manifest sha256s, every header and
                     library present, pkg-config answers from it); exit 0 or 1
  -h, --help         this text

Exit status: 0 every required step passed; 1 a required step failed or could
not run (or $OUT holds more than 8 files); 2 bad usage.
EOF
}

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || { echo "gpu_check: cannot find the source tree" >&2; exit 1; }
cd "$ROOT" || exit 1

# ------------------------------------------------------------------ options
DEADLINE=480
OUT_DIR="${OUT:-results/runs/gpu-check}"
BUNDLE=.gpu-deps
BUILD=""
COMMIT_ARG=""
REHEARSE=0
CHECK_BUNDLE=0
bad_usage() { echo "gpu_check: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --rehearse) REHEARSE=1; shift ;;
    --check-bundle) CHECK_BUNDLE=1; shift ;;
    --out|--deadline|--bundle|--build|--commit)
      [ $# -ge 2 ] || bad_usage "$1 needs a value (see --help)"
      [ -n "$2" ] || bad_usage "$1 needs a non-empty value"
      case "$1" in
        --out) OUT_DIR="$2" ;;
        --deadline) DEADLINE="$2" ;;
        --bundle) BUNDLE="$2" ;;
        --build) BUILD="$2" ;;
        --commit) COMMIT_ARG="$2" ;;
      esac
      shift 2 ;;
    *) bad_usage "unknown argument '$1' (see --help)" ;;
  esac
done
case "$DEADLINE" in ''|*[!0-9]*) bad_usage "--deadline takes whole seconds, not '$DEADLINE'" ;; esac
if [ "$DEADLINE" -lt 60 ] || [ "$DEADLINE" -gt 7200 ]; then bad_usage "--deadline must be 60..7200 seconds"; fi
case "$COMMIT_ARG" in *[!0-9a-fA-F]*) bad_usage "--commit takes a hex commit id" ;; esac
[ -n "$BUILD" ] || { if [ "$REHEARSE" = 1 ]; then BUILD=build-rehearse; else BUILD=build-gpu; fi; }

# Paths with spaces or shell-special characters would break pkg-config's
# flags and the wrapper below: refuse them.
safe_path() { case "$1" in *[!A-Za-z0-9._/+-]*) return 1 ;; esac; return 0; }
abs_dir() { (mkdir -p -- "$1" && cd -- "$1" && pwd); }

T0=$(date +%s)
END_MARGIN=10 # seconds kept for the summary and the archive
ARCH_DIR=x86_64-linux-gnu

# ------------------------------------------------------------------ the bundle
# What the build needs from the bundle, as PATH|PACKAGE (PATH under the prefix).
REQUIRED=(
  "usr/include/jansson.h|libjansson-dev"
  "usr/include/jansson_config.h|libjansson-dev"
  "usr/lib/$ARCH_DIR/libjansson.so|libjansson-dev"
  "usr/lib/$ARCH_DIR/libjansson.so.4|libjansson4"
  "usr/lib/$ARCH_DIR/pkgconfig/jansson.pc|libjansson-dev"
  "usr/include/$ARCH_DIR/openblas-pthread/cblas.h|libopenblas-pthread-dev"
  "usr/include/$ARCH_DIR/openblas-pthread/openblas_config.h|libopenblas-pthread-dev"
  "usr/lib/$ARCH_DIR/openblas-pthread/libopenblas.so|libopenblas-pthread-dev"
  "usr/lib/$ARCH_DIR/openblas-pthread/libopenblas.so.0|libopenblas0-pthread"
  "usr/lib/$ARCH_DIR/openblas-pthread/pkgconfig/openblas.pc|libopenblas-pthread-dev"
  "usr/lib/$ARCH_DIR/libgfortran.so.5|libgfortran5"
  "usr/lib/$ARCH_DIR/libquadmath.so.0|libquadmath0"
  "usr/include/csv.h|libcsv-dev"
  "usr/lib/$ARCH_DIR/libcsv.so|libcsv-dev"
  "usr/lib/$ARCH_DIR/libcsv.so.3|libcsv3"
  "usr/include/check.h|check"
  "usr/include/check_stdint.h|check"
  "usr/lib/$ARCH_DIR/libcheck_pic.a|check"
  "usr/lib/$ARCH_DIR/pkgconfig/check.pc|check"
  "usr/lib/$ARCH_DIR/libsubunit.so|libsubunit-dev"
  "usr/lib/$ARCH_DIR/libsubunit.so.0|libsubunit0"
  "usr/lib/$ARCH_DIR/pkgconfig/libsubunit.pc|libsubunit-dev"
  "usr/bin/pkgconf|pkgconf-bin"
  "usr/lib/$ARCH_DIR/libpkgconf.so.3|libpkgconf3"
)
BUNDLE_ERR="" # the last bundle function's one-line error

# bundle_verify DIR DEBDIR: the archive's and every .deb's sha256 against
# DIR/MANIFEST; the .deb files land in DEBDIR.
bundle_verify() {
  local dir="$1" debs="$2" man="$1/MANIFEST" arc="$1/gpu-deps.tar.gz"
  if [ ! -f "$man" ] || [ ! -f "$arc" ]; then
    BUNDLE_ERR="no bundle at $dir (MANIFEST and gpu-deps.tar.gz; make it with tools/gpu_deps.sh)"
    return 1
  fi
  local want got
  want="$(awk '/^# archive gpu-deps.tar.gz sha256 / {print $5; exit}' "$man")"
  got="$(sha256sum "$arc" | cut -d' ' -f1)"
  if [ -z "$want" ] || [ "$want" != "$got" ]; then
    BUNDLE_ERR="gpu-deps.tar.gz sha256 $got does not match the manifest's ${want:-(none)}"
    return 1
  fi
  if ! { mkdir -p "$debs" && tar -xzf "$arc" -C "$debs" 2>/dev/null; }; then BUNDLE_ERR="cannot unpack $arc"; return 1; fi
  local bad=() pkg file sum listed=()
  while IFS=$'\t' read -r pkg _ _ file sum _; do
    case "$pkg" in ''|'#'*) continue ;; esac
    listed+=("$file")
    if [ ! -f "$debs/debs/$file" ]; then bad+=("$pkg: $file missing"); continue; fi
    got="$(sha256sum "$debs/debs/$file" | cut -d' ' -f1)"
    [ "$got" = "$sum" ] || bad+=("$pkg: sha256 $got, manifest $sum")
  done <"$man"
  local f b known
  for f in "$debs"/debs/*.deb; do
    [ -e "$f" ] || continue
    b="$(basename "$f")"; known=0
    for file in "${listed[@]+"${listed[@]}"}"; do [ "$file" = "$b" ] && known=1 && break; done
    [ "$known" = 1 ] || bad+=("$b: not in the manifest")
  done
  [ "${#listed[@]}" -gt 0 ] || bad+=("the manifest lists no package")
  if [ "${#bad[@]}" -gt 0 ]; then
    BUNDLE_ERR="bundle refused: $(printf '%s; ' "${bad[@]}")"
    BUNDLE_ERR="${BUNDLE_ERR%; }"
    return 1
  fi
  return 0
}

# deb_extract DEB PREFIX: dpkg-deb -x where dpkg exists, else ar + tar, else
# Python (ar members read by hand, the data member by tarfile).
deb_extract() {
  local deb="$1" prefix="$2"
  if command -v dpkg-deb >/dev/null 2>&1; then
    dpkg-deb -x "$deb" "$prefix"
    return
  fi
  if command -v ar >/dev/null 2>&1; then
    local t data
    t="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-ar.XXXXXX")" || return 1
    if (cd "$t" && ar x "$deb"); then
      data="$(find "$t" -maxdepth 1 -name 'data.tar*' | head -1)"
      if [ -n "$data" ] && tar -xf "$data" -C "$prefix" 2>/dev/null; then rm -rf -- "$t"; return 0; fi
    fi
    rm -rf -- "$t"
  fi
  command -v python3 >/dev/null 2>&1 || return 1
  python3 - "$deb" "$prefix" <<'PY'
import io, sys, tarfile
deb, prefix = sys.argv[1], sys.argv[2]
with open(deb, "rb") as f:
    blob = f.read()
if blob[:8] != b"!<arch>\n":
    sys.exit("not an ar archive: " + deb)
pos = 8
while pos + 60 <= len(blob):
    name = blob[pos:pos + 16].decode().strip().rstrip("/")
    size = int(blob[pos + 48:pos + 58].decode().strip())
    body = blob[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith("data.tar"):
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as t:
            for m in t.getmembers():
                if m.name.startswith("/") or ".." in m.name.split("/"):
                    sys.exit("unsafe path in " + deb + ": " + m.name)
            if hasattr(tarfile, "tar_filter"):
                t.extractall(prefix, filter="tar")
            else:
                t.extractall(prefix)
        sys.exit(0)
sys.exit("no data member in " + deb)
PY
}

# bundle_unpack DEBDIR PREFIX
bundle_unpack() {
  local debs="$1" prefix="$2" f
  case "$prefix" in /?*) ;; *) BUNDLE_ERR="internal: the prefix '$prefix' is not an absolute path"; return 1 ;; esac
  [ "$prefix" != / ] || { BUNDLE_ERR="internal: refusing to unpack into /"; return 1; }
  mkdir -p "$prefix" || { BUNDLE_ERR="cannot create $prefix"; return 1; }
  for f in "$debs"/debs/*.deb; do
    [ -e "$f" ] || continue
    deb_extract "$f" "$prefix" || { BUNDLE_ERR="cannot unpack $(basename "$f") (dpkg-deb, ar + tar and python3 all failed)"; return 1; }
  done
  return 0
}

# deps_missing PREFIX: prints "name (package)" for each missing file.
deps_missing() {
  local prefix="$1" e rel pkg
  for e in "${REQUIRED[@]}"; do
    rel="${e%%|*}"; pkg="${e##*|}"
    [ -e "$prefix/$rel" ] || echo "$(basename "$rel") ($pkg)"
  done
}

# glibc_ok MANIFEST: the machine's glibc is at least the bundle's minimum.
GLIBC_HAVE="" GLIBC_NEED=""
glibc_ok() {
  GLIBC_NEED="$(awk '/^# needs glibc >= / {print $5; exit}' "$1")"
  GLIBC_HAVE="$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
  case "$GLIBC_NEED" in ''|unknown) return 0 ;; esac
  [ -n "$GLIBC_HAVE" ] || return 0
  [ "$(printf '%s\n%s\n' "$GLIBC_NEED" "$GLIBC_HAVE" | sort -V | head -1)" = "$GLIBC_NEED" ]
}

# deps_setup PREFIX: .pc files pointed at PREFIX, a pkg-config wrapper that
# reads them only, and the library path for running what is built.
PKGCONFIG="" DEPS_LD="" PC_DIRS=""
deps_setup() {
  local prefix="$1" pc line rep out
  PC_DIRS="$prefix/usr/lib/$ARCH_DIR/pkgconfig:$prefix/usr/lib/$ARCH_DIR/openblas-pthread/pkgconfig:$prefix/usr/share/pkgconfig"
  DEPS_LD="$prefix/usr/lib/$ARCH_DIR/openblas-pthread:$prefix/usr/lib/$ARCH_DIR"
  while IFS= read -r -d '' pc; do
    out=""
    while IFS= read -r line || [ -n "$line" ]; do
      rep="=$prefix/usr"; line="${line//=\/usr/"$rep"}"
      rep="-I$prefix/usr"; line="${line//-I\/usr/"$rep"}"
      rep="-L$prefix/usr"; line="${line//-L\/usr/"$rep"}"
      out+="$line"$'\n'
    done <"$pc"
    if ! { printf '%s' "$out" >"$pc.tmp" && mv -f "$pc.tmp" "$pc"; }; then BUNDLE_ERR="cannot rewrite $pc"; return 1; fi
  done < <(find "$prefix/usr" -name '*.pc' -print0)
  mkdir -p "$prefix/bin" || return 1
  local real="$prefix/usr/bin/pkgconf" wrapper="$prefix/bin/pkg-config"
  # the bundle's pkgconf first; the machine's pkg-config if that one cannot run here
  local cand ok=0
  for cand in "$real" "$(command -v pkg-config 2>/dev/null)" "$(command -v pkgconf 2>/dev/null)"; do
    if [ -z "$cand" ] || [ ! -x "$cand" ]; then continue; fi
    {
      echo '#!/bin/sh'
      echo "# made by harness/gpu_check.sh: pkg-config reading the bundle's .pc files only"
      echo "PKG_CONFIG_LIBDIR='$PC_DIRS'; export PKG_CONFIG_LIBDIR"
      echo "PKG_CONFIG_PATH=''; export PKG_CONFIG_PATH"
      echo "unset PKG_CONFIG_SYSROOT_DIR"
      [ "$cand" = "$real" ] && echo "LD_LIBRARY_PATH='$prefix/usr/lib/$ARCH_DIR'\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}; export LD_LIBRARY_PATH"
      echo "exec '$cand' \"\$@\""
    } >"$wrapper"
    chmod +x "$wrapper" || { BUNDLE_ERR="cannot write $wrapper"; return 1; }
    if out="$("$wrapper" --cflags --libs jansson openblas check 2>&1)"; then ok=1; PKGCONFIG_REAL="$cand"; break; fi
  done
  [ "$ok" = 1 ] || { BUNDLE_ERR="no working pkg-config: the bundle's pkgconf does not run here and the machine has none (${out:-})"; return 1; }
  local stripped="${out//"$prefix"/@PREFIX@}"
  case "$stripped" in
    *" -I/usr"*|*" -L/usr"*|"-I/usr"*|"-L/usr"*) BUNDLE_ERR="pkg-config points outside the bundle: $out"; return 1 ;;
  esac
  case "$stripped" in
    *"-I@PREFIX@/usr/include"*) ;;
    *) BUNDLE_ERR="pkg-config does not answer from the bundle: $out"; return 1 ;;
  esac
  PKGCONFIG="$wrapper"
  PKGCONFIG_FLAGS="$stripped"
  return 0
}
PKGCONFIG_REAL="" PKGCONFIG_FLAGS=""

if [ "$CHECK_BUNDLE" = 1 ]; then
  # --check-bundle: verify, unpack into a temporary prefix, name what is missing
  tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-bundle.XXXXXX")" || { echo "gpu_check: mktemp failed" >&2; exit 1; }
  trap 'rm -rf -- "$tmp"' EXIT
  safe_path "$tmp" || { echo "gpu_check: the temporary directory '$tmp' has unusual characters" >&2; exit 1; }
  bdir="$(cd "$BUNDLE" 2>/dev/null && pwd)" || { echo "gpu_check: no bundle at $BUNDLE (make it with tools/gpu_deps.sh)" >&2; exit 1; }
  bundle_verify "$bdir" "$tmp/debs" || { echo "gpu_check: $BUNDLE_ERR" >&2; exit 1; }
  bundle_unpack "$tmp/debs" "$tmp/prefix" || { echo "gpu_check: $BUNDLE_ERR" >&2; exit 1; }
  missing="$(deps_missing "$tmp/prefix")"
  if [ -n "$missing" ]; then
    echo "gpu_check: the bundle lacks: $(echo "$missing" | paste -sd, - | sed 's/,/, /g')" >&2
    exit 1
  fi
  glibc_ok "$bdir/MANIFEST" || { echo "gpu_check: the bundle needs glibc >= $GLIBC_NEED; this machine has $GLIBC_HAVE" >&2; exit 1; }
  deps_setup "$tmp/prefix" || { echo "gpu_check: $BUNDLE_ERR" >&2; exit 1; }
  n="$(awk -F'\t' '!/^#/ && NF >= 6' "$bdir/MANIFEST" | wc -l)"
  echo "gpu_check: bundle ok: $n packages, sha256s match, all ${#REQUIRED[@]} headers and libraries present, pkg-config answers from the bundle ($(basename "$PKGCONFIG_REAL"))"
  exit 0
fi

# ------------------------------------------------------------------ the run's files
safe_path "$ROOT" || { echo "gpu_check: the source tree's path '$ROOT' has spaces or special characters" >&2; exit 1; }
OUT_DIR="$(abs_dir "$OUT_DIR")" || { echo "gpu_check: cannot create $OUT_DIR" >&2; exit 1; }
BUILD="$(abs_dir "$BUILD")" || { echo "gpu_check: cannot create the build directory" >&2; exit 1; }
safe_path "$BUILD" || { echo "gpu_check: the build directory '$BUILD' has spaces or special characters" >&2; exit 1; }
case "$BUILD" in "$ROOT"|"$ROOT/build"|"$ROOT/build-asan"|"$ROOT/build-cuda")
  echo "gpu_check: $BUILD is another build's directory; pick one with --build" >&2; exit 2 ;; esac
if [ -f "$BUILD/CMakeCache.txt" ] && [ ! -f "$BUILD/.gpu_check" ]; then
  echo "gpu_check: $BUILD holds a build that gpu_check did not make; pick another with --build" >&2; exit 2
fi
touch "$BUILD/.gpu_check"
BUNDLE_ABS="$(cd "$BUNDLE" 2>/dev/null && pwd)" || BUNDLE_ABS="$BUNDLE"
W="$BUILD/gpu-check"           # the work folder: everything the archive holds
P="$BUILD/deps-prefix"         # the bundle, unpacked
rm -rf -- "$W" "$P"
mkdir -p "$W/logs" || { echo "gpu_check: cannot create $W" >&2; exit 1; }
SUMMARY="$OUT_DIR/summary.txt"
# the files this script leaves in $OUT: start from none of them
LOOSE=(summary.txt gpu-check.tar.gz cuda-facts.txt headline-cuda.csv headline-cuda.md h200-measured.json)
for f in "${LOOSE[@]}"; do rm -f -- "${OUT_DIR:?}/$f"; done
: >"$SUMMARY" || { echo "gpu_check: cannot write $SUMMARY" >&2; exit 1; }
MB="$BUILD/harness/moebench"

# ------------------------------------------------------------------ steps and caps
ORDER=(a-env a-deps a-facts b-sampler c-build d-generate e-ctest o-overtake p-graphs f-memcheck f-racecheck
       g-calibrate h-validate i-headline j-switch-base-64 j-switch-base-128 k-paper-rest)
declare -A CAP=([a-env]=10 [a-deps]=20 [a-facts]=20 [b-sampler]=5 [c-build]=90 [d-generate]=20
                [e-ctest]=90 [f-memcheck]=45 [f-racecheck]=45 [g-calibrate]=45 [h-validate]=40
                [i-headline]=75 [o-overtake]=60 [p-graphs]=90 [j-switch-base-64]=70 [j-switch-base-128]=120 [k-paper-rest]=0)
declare -A KIND=([a-env]=required [a-deps]=required [a-facts]=required [b-sampler]=wanted
                 [c-build]=required [d-generate]=required [e-ctest]=required [f-memcheck]=optional
                 [f-racecheck]=optional [g-calibrate]=required [h-validate]=wanted
                 [i-headline]=required [o-overtake]=wanted [p-graphs]=wanted [j-switch-base-64]=wanted [j-switch-base-128]=wanted
                 [k-paper-rest]=optional)
# k's cap is whatever time is left.  The caps are the 16-core GPU machine's;
# a rehearsal keeps them (the CUDA build takes under a minute even on 2 cores).
CAP_NOTE=""
[ "$REHEARSE" = 1 ] && [ "$(nproc)" -lt 16 ] && CAP_NOTE="rehearsal on $(nproc) cores with the GPU machine's caps"

now() { date +%s; }
elapsed() { echo $(( $(now) - T0 )); }
global_left() { echo $(( DEADLINE - END_MARGIN - $(elapsed) )); }
STEP_T0=0 STEP_CAP=0 STEP_STATUS="" STEP_FIGS="" STEP_DETAILS=() STOP=""
step_left() {
  local l=$(( STEP_CAP - ($(now) - STEP_T0) )) g
  g="$(global_left)"
  [ "$g" -lt "$l" ] && l="$g"
  [ "$l" -lt 1 ] && l=1
  echo "$l"
}
# tmo CMD...: the command under the step's remaining time
tmo() { timeout -k 5 "$(step_left)" "$@"; }
# with_libs CMD...: with the bundle's libraries on the library path; tmo_libs: both
with_libs() { env LD_LIBRARY_PATH="$DEPS_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
tmo_libs() { timeout -k 5 "$(step_left)" env LD_LIBRARY_PATH="$DEPS_LD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$@"; }
say() { echo "== $(date -u +%H:%M:%S) [$(elapsed)s] $*"; }
fig() { STEP_FIGS="${STEP_FIGS:+$STEP_FIGS; }$*"; }
detail() { STEP_DETAILS+=("$@"); }
fail() { STEP_STATUS=FAIL; fig "$@"; }
timed_out() { [ "$1" = 124 ] || [ "$1" = 137 ]; }

REQ_BAD=() # required steps that failed or could not run
FAILED=()
record() { # STATUS NAME SECONDS FIGS
  local line="$1 $2 ${3}s${4:+ $4}" d
  echo "$line" >>"$SUMMARY"
  echo "$line"
  for d in "${STEP_DETAILS[@]+"${STEP_DETAILS[@]}"}"; do
    echo "  $d" >>"$SUMMARY"
    echo "  $d"
  done
  STEP_DETAILS=()
  [ "$1" = FAIL ] && FAILED+=("$2")
  if [ "${KIND[$2]:-}" = required ]; then
    case "$1" in
      FAIL) REQ_BAD+=("$2") ;;
      SKIP) case "$4" in *"rehearsal: no GPU"*) ;; *) REQ_BAD+=("$2") ;; esac ;;
    esac
  fi
}
note() { echo "NOTE $*" >>"$SUMMARY"; echo "NOTE $*"; }

# What a step must leave for the steps after it: a wanted step, the caps of
# the required ones; an optional step, those of the required and wanted ones.
reserve_after() {
  local s seen=0 sum=0
  for s in "${ORDER[@]}"; do
    if [ "$seen" = 1 ]; then
      case "${KIND[$1]}/${KIND[$s]}" in
        wanted/required|optional/required|optional/wanted) sum=$(( sum + CAP[$s] )) ;;
      esac
    fi
    [ "$s" = "$1" ] && seen=1
  done
  echo "$sum"
}

# run_step NAME FUNCTION
MEM_FILE="$W/gpu-mem-used-mib.txt" SAMPLER_PID=""
run_step() {
  local name="$1" fn="$2" left need res
  STEP_DETAILS=()
  if [ -n "$STOP" ]; then record SKIP "$name" 0 "not run: $STOP"; return; fi
  left="$(global_left)"
  need="${CAP[$name]}"
  res=0
  [ "${KIND[$name]}" = required ] || res="$(reserve_after "$name")"
  if [ "$need" -eq 0 ] && [ "$left" -lt 30 ]; then
    record SKIP "$name" 0 "not enough time: ${left}s left"
    return
  fi
  if [ "$need" -gt 0 ] && [ $(( need + res )) -gt "$left" ]; then
    record SKIP "$name" 0 "not enough time: cap ${need}s$([ "$res" -gt 0 ] && echo " + ${res}s kept for the steps after it") > ${left}s left"
    return
  fi
  STEP_T0="$(now)" STEP_CAP="$need" STEP_STATUS=PASS STEP_FIGS=""
  [ "$STEP_CAP" -gt 0 ] || STEP_CAP="$left"
  local m0=0 m1
  [ -f "$MEM_FILE" ] && m0="$(wc -l <"$MEM_FILE")"
  say "step $name (cap ${STEP_CAP}s, $(global_left)s left)"
  "$fn"
  if [ -n "$SAMPLER_PID" ] && [ -f "$MEM_FILE" ]; then
    sleep 0.3
    m1="$(wc -l <"$MEM_FILE")"
    local pk
    pk="$(awk -v a="$m0" -v b="$m1" 'NR > a && NR <= b && $1 ~ /^[0-9]+$/ {if ($1 > m) m = $1; n++} END {if (n) print m}' "$MEM_FILE")"
    [ -n "$pk" ] && fig "driver peak ${pk} MiB"
  fi
  record "$STEP_STATUS" "$name" $(( $(now) - STEP_T0 )) "$STEP_FIGS"
}

# ------------------------------------------------------------------ helpers in Python
PY="$W/gpu_check_helpers.py"
HAVE_PY=0
command -v python3 >/dev/null 2>&1 && HAVE_PY=1
cat >"$PY" <<'PY'
"""Helpers of harness/gpu_check.sh: suite rewriting, figures from result
CSVs, profile and modeled-vs-measured tables.  Standard library only."""
import csv, json, math, sys


def num(v):
    try:
        x = float(v)
        return x if math.isfinite(x) else None
    except (TypeError, ValueError):
        return None


def fmt(x, spec=".3g"):
    return "n/a" if x is None else format(x, spec)


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def cmd_suite(src, dst, *edits):
    """suite SRC DST key=JSON ... -key ...: a suite with keys set or dropped."""
    with open(src) as f:
        s = json.load(f)
    for e in edits:
        if e.startswith("-"):
            s.pop(e[1:], None)
        else:
            k, v = e.split("=", 1)
            s[k] = json.loads(v)
    with open(dst, "w") as f:
        json.dump(s, f, indent=2)
        f.write("\n")


def cmd_figures(path, link_gbps="0"):
    """figures CSV [GBPS]: line 1 compact figures, then one line per row.
    GBPS (the measured pinned copy bandwidth) gives a derived overlap: the
    share of the rows' copy time (h2d bytes / GBPS) that did not stall."""
    bw = num(link_gbps) or 0
    rows = rows_of(path)
    if not rows:
        print("no rows")
        return 1
    cols = rows[0].keys()
    over = [c for c in cols if "overlap" in c]
    compact, lines, bad = [], [], []
    for r in rows:
        pol = r.get("policy", "?")
        if r.get("status") != "ok":
            bad.append(pol)
            lines.append("%s/%s: %s %s" % (r.get("model", "?"), pol, r.get("status"), r.get("error", "")))
            continue
        tps, p50 = num(r.get("tokens_per_s")), num(r.get("token_latency_p50_s"))
        e2e, stall = num(r.get("e2e_s")), num(r.get("stall_s"))
        peak = num(r.get("peak_device_bytes"))
        share = stall / e2e if (stall is not None and e2e) else None
        pinned = (r.get("pinned") or "n/a") if "pinned" in cols else "n/a (no column)"
        pin_s = fmt(num(r.get("pin_s")), ".2f") if "pin_s" in cols else "n/a"
        ov = ", ".join("%s %s" % (c, r.get(c, "")) for c in over)
        h2d = num(r.get("h2d_bytes"))
        if not ov and bw > 0 and h2d and stall is not None:
            copy_s = h2d / (bw * 1e9)
            ov = "copies hidden ~%s%% (derived: 1 - stall / (h2d bytes / %.1f GB/s))" % (
                fmt(max(0.0, 1 - stall / copy_s) * 100 if copy_s > 0 else None, ".0f"), bw)
        elif not ov:
            ov = "no expert copies" if h2d == 0 else "overlap n/a (no column)"
        compact.append("%s %s tok/s p50 %s ms" % (pol, fmt(tps, ".1f"), fmt(p50 and p50 * 1e3, ".2f")))
        lines.append(
            "%s/%s: %s tok/s, p50 %s ms, ttft %s s, e2e %s s, peak %s GiB (allocator), stall %s s (%s of e2e), "
            "%s, pinned %s, pin_s %s, h2d %s GB, fetches %s"
            % (r.get("model", "?"), pol, fmt(tps, ".1f"), fmt(p50 and p50 * 1e3, ".2f"),
               fmt(num(r.get("ttft_s")), ".3f"), fmt(e2e, ".3f"), fmt(peak and peak / 2**30, ".2f"),
               fmt(stall, ".3f"), fmt(share and share * 100, ".1f") + "%", ov, pinned, pin_s,
               fmt(num(r.get("h2d_bytes")) and num(r.get("h2d_bytes")) / 1e9, ".2f"),
               r.get("expert_fetches", "n/a")))
    print("; ".join(compact or ["no ok row"]) + ("; not ok: " + ",".join(bad) if bad else ""))
    for l in lines:
        print(l)
    return 1 if bad else 0


def cmd_setup(log, path, warmup="0"):
    """setup LOG CSV WARMUP: seconds before the first row's runs (synthesis,
    pinning), from the sweep's progress line after row 1."""
    el = None
    with open(log, errors="replace") as f:
        for line in f:
            if line.startswith("[1/") and "elapsed" in line:
                try:
                    el = float(line.split("elapsed", 1)[1].split()[0])
                except ValueError:
                    pass
                break
    rows = rows_of(path) if path else []
    if el is None or not rows:
        print("setup n/a")
        return 0
    r = rows[0]
    runs = (int(r.get("repetitions") or 1) + int(warmup)) * (num(r.get("e2e_s")) or 0)
    pin = num(r.get("pin_s")) if "pin_s" in r else None
    synth = max(0.0, el - runs - (pin or 0))
    synth_col = num(r.get("synth_s")) if "synth_s" in r else None
    if synth_col is not None:
        print("synthesis %.1f s (synth_s column), pinning %s s" % (synth_col, fmt(pin, ".2f")))
    else:
        print("synthesis ~%.0f s (derived: first row done at %.0f s, minus its runs %.1f s%s), pinning %s"
              % (synth, el, runs, " and pin_s" if pin is not None else "",
                 ("%.2f s (pin_s)" % pin) if pin is not None else "n/a (no pin_s column)"))
    return 0


def flat(d, pre=""):
    out = {}
    for k, v in d.items():
        if k in ("sources", "name", "description", "calibrated"):
            continue
        key = pre + k
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        elif isinstance(v, (int, float)) and not isinstance(v, bool):
            out[key] = float(v)
    return out


def cmd_profile(measured, sheet, facts):
    """profile MEASURED.json|- DATASHEET.json FACTS.txt|-: markdown table."""
    with open(sheet) as f:
        s = json.load(f)
    fs, src = flat(s), s.get("sources", {})
    m = {}
    if measured != "-":
        with open(measured) as f:
            m = flat(json.load(f))
    fa = {}
    if facts != "-":
        with open(facts, errors="replace") as f:
            for line in f:
                if "=" in line:
                    k, v = line.rstrip("\n").split("=", 1)
                    fa[k] = v
    print("| field | measured | %s | measured / sheet | sheet's source |" % s.get("name", "sheet"))
    print("|---|---|---|---|---|")
    n = 0
    for k in sorted(set(fs) & set(m)):
        r = m[k] / fs[k] if fs[k] else None
        print("| %s | %.4g (calibrate) | %.4g | %s | %s |" % (k, m[k], fs[k], fmt(r, ".2f"), src.get(k, src.get(k.split(".")[0], ""))))
        n += 1
    for key, fk in (("h2d_gbps.pinned", "h2d_pinned_gbps"), ("h2d_gbps.pageable", "h2d_pageable_gbps"),
                    ("memory_bytes", "device_memory_bytes")):
        v = num(fa.get(fk))
        if v is not None and key in fs:
            r = v / fs[key] if fs[key] else None
            print("| %s | %.4g (cuda_facts) | %.4g | %s | %s |" % (key, v, fs[key], fmt(r, ".2f"), src.get(key, "")))
            n += 1
    if n == 0:
        print("| (no field in common) | | | | |")
    return 0


def cmd_modeled(meas, model):
    """modeled CUDA.csv SIM.csv: tokens/s measured beside modeled, per policy."""
    a = {r["policy"]: r for r in rows_of(meas) if r.get("status") == "ok"}
    b = {r["policy"]: r for r in rows_of(model) if r.get("status") == "ok"}
    print("| policy | tokens/s measured (cuda) | tokens/s modeled (sim) | modeled / measured | peak GiB measured | peak GiB modeled |")
    print("|---|---|---|---|---|---|")
    for p in a:
        ma, mb = num(a[p].get("tokens_per_s")), num(b.get(p, {}).get("tokens_per_s"))
        pa, pb = num(a[p].get("peak_device_bytes")), num(b.get(p, {}).get("peak_device_bytes"))
        print("| %s | %s | %s | %s | %s | %s |" % (p, fmt(ma, ".1f"), fmt(mb, ".1f"),
              fmt(mb / ma if (ma and mb) else None, ".2f"), fmt(pa and pa / 2**30, ".2f"), fmt(pb and pb / 2**30, ".2f")))
    return 0


if __name__ == "__main__":
    cmds = {"suite": cmd_suite, "figures": cmd_figures, "setup": cmd_setup,
            "profile": cmd_profile, "modeled": cmd_modeled}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit("usage: gpu_check_helpers.py " + "|".join(cmds) + " ARGS")
    try:
        sys.exit(cmds[sys.argv[1]](*sys.argv[2:]) or 0)
    except (OSError, ValueError, KeyError, TypeError) as e:
        print("helper %s: %s" % (sys.argv[1], e))
        sys.exit(1)
PY
helper() { if [ "$HAVE_PY" = 1 ]; then python3 "$PY" "$@"; else echo "n/a (no python3)"; return 1; fi; }

# suite_from SRC DST EDIT...: a suite file with keys set (k=JSON) or dropped (-k)
suite_from() {
  local src="$1" dst="$2"; shift 2
  if [ "$HAVE_PY" = 1 ]; then python3 "$PY" suite "$src" "$dst" "$@"; return; fi
  # without Python: only what the shipped suites need, line by line
  local e sedargs=()
  for e in "$@"; do
    case "$e" in
      -*) sedargs+=(-e "/\"${e#-}\"/d") ;;
      backend=*) sedargs+=(-e "s/\"backend\": \"[a-z]*\"/\"backend\": ${e#backend=}/") ;;
      *) echo "suite edit '$e' needs python3" >&2; return 1 ;;
    esac
  done
  sed "${sedargs[@]}" "$src" >"$dst"
}

# ------------------------------------------------------------------ the steps
NVCC="" NVSMI=""
find_nvcc() {
  NVCC="$(command -v nvcc 2>/dev/null || true)"
  [ -n "$NVCC" ] || { [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ] && NVCC="$CUDA_HOME/bin/nvcc"; }
  [ -n "$NVCC" ] || { [ -x /usr/local/cuda/bin/nvcc ] && NVCC=/usr/local/cuda/bin/nvcc; }
  [ -n "$NVCC" ]
}

step_a_env() {
  local log="$W/logs/a-env.log" smi=""
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "uname: $(uname -srm)"
    echo "os: $(sed -n 's/^PRETTY_NAME=//p' /etc/os-release 2>/dev/null | tr -d '"')"
    echo "glibc: $(getconf GNU_LIBC_VERSION 2>/dev/null)"
    echo "cpu: $(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo 2>/dev/null), $(nproc) cores"
    echo "memory: $(awk '/^MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo 2>/dev/null)"
  } >"$log"
  NVSMI="$(command -v nvidia-smi 2>/dev/null || true)"
  if [ -n "$NVSMI" ] && smi="$(tmo "$NVSMI" --query-gpu=name,memory.total,driver_version,pcie.link.gen.current,pcie.link.width.current,pcie.link.gen.max,pcie.link.width.max \
        --format=csv,noheader 2>&1)"; then
    echo "nvidia-smi: $smi" >>"$log"
    tmo "$NVSMI" >>"$log" 2>&1
    fig "GPU $smi (name, memory, driver, PCIe gen/width now, gen/width max)"
  elif [ "$REHEARSE" = 1 ]; then
    fig "no GPU (rehearsal)"
  else
    fail "nvidia-smi ${NVSMI:+failed: $(echo "$smi" | head -1)}${NVSMI:-not found}"
  fi
  if find_nvcc; then
    local v
    v="$(tmo "$NVCC" --version 2>&1 | grep -o 'release [0-9.]*, V[0-9.]*' | head -1)"
    echo "nvcc: $NVCC: $v" >>"$log"
    fig "nvcc ${v:-?}"
  else
    fail "nvcc not found (PATH, \$CUDA_HOME/bin, /usr/local/cuda/bin)"
  fi
  # the build tool: make (CMake's default generator), else Ninja
  if [ -z "${CMAKE_GENERATOR:-}" ] && ! command -v make >/dev/null 2>&1; then
    if command -v ninja >/dev/null 2>&1; then export CMAKE_GENERATOR=Ninja; else fail "neither make nor ninja found"; fi
  fi
  fig "generator ${CMAKE_GENERATOR:-Unix Makefiles}"
  local tool v
  for tool in gcc cmake python3; do
    if command -v "$tool" >/dev/null 2>&1; then
      v="$(tmo "$tool" --version 2>&1 | head -1)"
      echo "$tool: $v" >>"$log"
      fig "$tool ${v##* }"
      if [ "$tool" = cmake ]; then
        local need_cm
        need_cm="$(sed -n 's/^cmake_minimum_required(VERSION \([0-9.]*\)).*/\1/p' "$ROOT/CMakeLists.txt" | head -1)"
        if [ -n "$need_cm" ] && [ "$(printf '%s\n%s\n' "$need_cm" "${v##* }" | sort -V | head -1)" != "$need_cm" ]; then
          fail "cmake ${v##* } is older than the $need_cm CMakeLists.txt requires"
        fi
      fi
    elif [ "$tool" = python3 ]; then
      fig "python3 missing (figures and tables n/a)"
    else
      fail "$tool not found"
    fi
  done
  cat "$log" >"$W/machine.txt"
}

step_a_deps() {
  local log="$W/logs/a-deps.log" missing n
  if ! bundle_verify "$BUNDLE_ABS" "$W/bundle"; then fail "$BUNDLE_ERR"; STOP="the dependency bundle is unusable"; return; fi
  if ! bundle_unpack "$W/bundle" "$P"; then fail "$BUNDLE_ERR"; STOP="the dependency bundle is unusable"; return; fi
  cp "$BUNDLE_ABS/MANIFEST" "$W/bundle-MANIFEST.txt"
  rm -rf -- "$W/bundle" # the .deb files stay out of the archive
  missing="$(deps_missing "$P")"
  if [ -n "$missing" ]; then
    fail "missing from the bundle: $(echo "$missing" | paste -sd, - | sed 's/,/, /g')"
    STOP="the dependency bundle lacks headers or libraries"
    return
  fi
  if ! glibc_ok "$BUNDLE_ABS/MANIFEST"; then
    fail "the bundle's binaries need glibc >= $GLIBC_NEED; this machine has $GLIBC_HAVE"
    STOP="the dependency bundle does not fit this machine's glibc"
    return
  fi
  if ! deps_setup "$P"; then fail "$BUNDLE_ERR"; STOP="pkg-config cannot read the bundle"; return; fi
  n="$(awk -F'\t' '!/^#/ && NF >= 6' "$BUNDLE_ABS/MANIFEST" | wc -l)"
  {
    echo "prefix: $P"
    echo "pkg-config: $PKGCONFIG -> $PKGCONFIG_REAL"
    echo "pkg-config --cflags --libs jansson openblas check: $PKGCONFIG_FLAGS"
    echo "LD_LIBRARY_PATH for runs: $DEPS_LD"
  } >"$log"
  local how=python3
  if command -v dpkg-deb >/dev/null 2>&1; then how=dpkg-deb; elif command -v ar >/dev/null 2>&1; then how="ar + tar"; fi
  fig "$n packages unpacked ($how), sha256s match, all ${#REQUIRED[@]} headers and libraries present, glibc ${GLIBC_HAVE:-?} >= ${GLIBC_NEED:-?}, pkg-config $(basename "$PKGCONFIG_REAL") reads the bundle only"
}

FACTS="$W/cuda-facts.txt"
step_a_facts() {
  local log="$W/logs/a-facts.log" rc
  if [ -z "$NVCC" ]; then fail "no nvcc"; return; fi
  if ! tmo "$NVCC" -O2 -arch=sm_90 -Xcompiler -Wall,-Wextra -o "$W/cuda_facts" "$ROOT/tools/cuda_facts.cu" >"$log" 2>&1; then
    fail "nvcc tools/cuda_facts.cu failed: $(grep -m1 -i error "$log")"
    return
  fi
  fig "compiled (sm_90)"
  tmo "$W/cuda_facts" >"$FACTS" 2>&1
  rc=$?
  cat "$FACTS" >>"$log"
  if [ "$rc" = 77 ]; then
    if [ "$REHEARSE" = 1 ]; then
      STEP_STATUS=SKIP
      fig "rehearsal: no GPU; the probe exits 77: $(head -1 "$FACTS")"
    else
      fail "no usable GPU: $(head -1 "$FACTS")"
    fi
    return
  fi
  if [ "$rc" != 0 ]; then
    fail "cuda_facts exit $rc: $(grep -m1 '^error=' "$FACTS" || tail -1 "$FACTS")"
    return
  fi
  local k
  for k in device_name compute_capability fork_after_init event_query_pending event_query_then_peek_at_last_error \
           event_query_then_get_last_error event_query_sticky h2d_pinned_gbps h2d_pageable_gbps host_register_256MiB_ms; do
    detail "$(grep -m1 "^$k=" "$FACTS" || echo "$k=n/a")"
  done
  fig "$(sed -n 's/^device_name=//p' "$FACTS" | head -1) sm_$(sed -n 's/^compute_capability=//p' "$FACTS" | tr -d .)"
  fig "fork after init: $(sed -n 's/^fork_after_init=\([a-z]*\).*/\1/p' "$FACTS")"
  fig "query NotReady sticky: $(sed -n 's/^event_query_sticky=\([a-z]*\).*/\1/p' "$FACTS")"
  fig "H2D 256 MiB pinned $(sed -n 's/^h2d_pinned_gbps=//p' "$FACTS") GB/s, pageable $(sed -n 's/^h2d_pageable_gbps=//p' "$FACTS") GB/s"
}

step_b_sampler() {
  if [ "$REHEARSE" = 1 ]; then STEP_STATUS=SKIP; fig "rehearsal: no GPU"; return; fi
  if [ -z "$NVSMI" ]; then fail "no nvidia-smi"; return; fi
  "$NVSMI" --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 >"$MEM_FILE" 2>"$W/logs/b-sampler.err" &
  SAMPLER_PID=$!
  sleep 1
  if ! kill -0 "$SAMPLER_PID" 2>/dev/null; then
    SAMPLER_PID=""
    fail "the sampler stopped: $(head -1 "$W/logs/b-sampler.err")"
    return
  fi
  fig "nvidia-smi memory.used every 200 ms (pid $SAMPLER_PID), $(wc -l <"$MEM_FILE") samples so far"
}
stop_sampler() {
  if [ -n "$SAMPLER_PID" ]; then
    kill "$SAMPLER_PID" 2>/dev/null
    wait "$SAMPLER_PID" 2>/dev/null
    SAMPLER_PID=""
  fi
}
trap stop_sampler EXIT
trap 'stop_sampler; exit 143' TERM INT

# The build used the bundle and nothing of the system's copies: link lines,
# the compiler's dependency files and ldd.
isolation_check() {
  local problems=() text n_dep lib hdr
  # link.txt and the response files it reads (CUDA-linked targets use them);
  # the bundle's libraries appear by absolute path or relative to the
  # target's folder (../deps-prefix/...)
  text="$(find "$BUILD" \( -name link.txt -o -name 'linkLibs.rsp' -o -name 'objects1.rsp' \) -path '*CMakeFiles*' \
            \( -path '*/moebench.dir/*' -o -path '*/test_cuda.dir/*' -o -path '*/test_backend_conformance.dir/*' \
               -o -path '*/test_backend_math.dir/*' -o -path '*/test_backend_table.dir/*' \) \
            -exec cat {} + 2>/dev/null)"
  # Ninja keeps every link command in build.ninja
  [ -f "$BUILD/build.ninja" ] && text+=$'\n'"$(grep -E 'LINK_LIBRARIES|LINK_FLAGS' "$BUILD/build.ninja")"
  text="${text//"$P"/@PREFIX@}"
  text="$(sed -E 's#(^|[ "])(\.\./)*deps-prefix/#\1@PREFIX@/#g' <<<"$text")"
  for lib in libjansson libopenblas libcsv libcheck libsubunit; do
    grep -Eq "@PREFIX@/usr/lib/[^ \"]*/${lib}[._]" <<<"$text" || problems+=("link lines lack the bundle's $lib")
  done
  local sys_re='(^|[ "])((/usr|/lib)[^ "@]*/lib(jansson|openblas|blas|csv|check|check_pic|subunit)[.][^ "]*|-l(jansson|openblas|csv|check|check_pic|subunit))([ "]|$)'
  if grep -Eq "$sys_re" <<<"$text"; then
    problems+=("a link line names a system copy or a bare -l: $(grep -Eo "$sys_re" <<<"$text" | sort -u | head -3 | tr '\n' ' ')")
  fi
  # compiler dependency files (gcc -MD, nvcc -MD): every header named
  local deps
  if [ -f "$BUILD/build.ninja" ]; then
    # Ninja folds the dependency files into its log: ninja -t deps prints it
    deps="$(ninja -C "$BUILD" -t deps 2>/dev/null)"
    n_dep="$(grep -c '#deps' <<<"$deps")"
  else
    deps="$(find "$BUILD" \( -name '*.o.d' -o -name 'compiler_depend.make' -o -name '*.obj.d' \) -path '*CMakeFiles*' -exec cat {} + 2>/dev/null)"
    n_dep="$(find "$BUILD" -name '*.o.d' -path '*CMakeFiles*' | wc -l)"
  fi
  deps="${deps//"$P"/@PREFIX@}"
  for hdr in jansson.h cblas.h csv.h check.h; do
    grep -Eq "@PREFIX@/usr/include/([^ ]*/)?${hdr}" <<<"$deps" || problems+=("no dependency file names the bundle's $hdr")
    if grep -Eq "(^|[ :])/usr/(local/)?include/([^ ]*/)?$hdr" <<<"$deps"; then
      problems+=("a dependency file names the system's $hdr")
    fi
  done
  # ldd: with the run's library path every one of them from the bundle, and
  # without it the direct ones too (RUNPATH)
  local bin l withp nop
  for bin in "$MB" "$BUILD/tests/test_cuda" "$BUILD/tests/test_backend_conformance" \
             "$BUILD/tests/test_backend_math" "$BUILD/tests/test_backend_table"; do
    [ -x "$bin" ] || { problems+=("$(basename "$bin") was not built"); continue; }
    withp="$(with_libs ldd "$bin" 2>&1)"
    nop="$(env -u LD_LIBRARY_PATH ldd "$bin" 2>&1)"
    for l in libjansson.so libopenblas.so libgfortran.so libquadmath.so libcsv.so libsubunit.so; do
      local line
      line="$(grep -m1 "$l" <<<"$withp")"
      [ -n "$line" ] || continue
      case "$line" in *"=> $P/"*) ;; *) problems+=("$(basename "$bin"): $line") ;; esac
    done
    for l in libjansson.so libopenblas.so libcsv.so; do
      local line
      line="$(grep -m1 "$l" <<<"$nop")"
      [ -n "$line" ] || continue
      case "$line" in *"=> $P/"*) ;; *) problems+=("$(basename "$bin") without LD_LIBRARY_PATH: $line") ;; esac
    done
  done
  {
    echo "# link lines (bundle prefix shown as @PREFIX@)"; echo "$text"
    echo "# ldd $MB with the run's LD_LIBRARY_PATH"; with_libs ldd "$MB" 2>&1
    echo "# ldd $MB without it"; env -u LD_LIBRARY_PATH ldd "$MB" 2>&1
    echo "# problems: ${#problems[@]}"; printf '%s\n' "${problems[@]+"${problems[@]}"}"
  } >"$W/logs/c-isolation.log"
  if [ "${#problems[@]}" -gt 0 ]; then
    fail "not built from the bundle alone: $(printf '%s; ' "${problems[@]}" | cut -c1-600)"
    return 1
  fi
  fig "isolation: jansson, openblas, csv, check, subunit linked from the bundle; $n_dep dependency files name the bundle's jansson.h, cblas.h, csv.h, check.h and no system copy; ldd resolves them into the bundle"
  return 0
}

step_c_build() {
  local t0 rc cfg=()
  t0="$(now)"
  rm -f "$BUILD/CMakeCache.txt" # a fresh configure: every dependency found again, in the bundle
  cfg=(-S "$ROOT" -B "$BUILD" -DMOE_WITH_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 -DCMAKE_BUILD_TYPE=Release
       -DCMAKE_CUDA_COMPILER="$NVCC" -DPKG_CONFIG_EXECUTABLE="$PKGCONFIG" -DCMAKE_PREFIX_PATH="$P/usr"
       -DMOE_LIB_csv="$P/usr/lib/$ARCH_DIR/libcsv.so" -DMOE_INC_csv="$P/usr/include")
  tmo env PKG_CONFIG_LIBDIR="$PC_DIRS" PKG_CONFIG_PATH="" cmake "${cfg[@]}" >"$W/logs/c-cmake.log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    if timed_out "$rc"; then fail "cmake timed out"; else fail "cmake failed: $(grep -m1 -A2 'CMake Error' "$W/logs/c-cmake.log" | tr '\n' ' ' | cut -c1-300)"; fi
    STOP="the build failed"
    return
  fi
  fig "configure $(( $(now) - t0 ))s"
  t0="$(now)"
  tmo cmake --build "$BUILD" -j "$(nproc)" --target moebench test_cuda test_backend_conformance test_backend_math test_backend_table test_backend_host_stream test_backend_urgent test_capture_gate test_cuda_switches >"$W/logs/c-build.log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    if timed_out "$rc"; then fail "build timed out after $(( $(now) - t0 ))s"; else fail "build failed: $(grep -m1 -iE 'error|undefined reference' "$W/logs/c-build.log" | cut -c1-300)"; fi
    STOP="the build failed"
    return
  fi
  fig "build $(( $(now) - t0 ))s on $(nproc) cores"
  with_libs "$MB" list backends >"$W/logs/c-backends.log" 2>&1
  detail "$(grep -m1 '^cuda ' "$W/logs/c-backends.log" || echo 'cuda: not listed')"
  detail "$(grep -m1 '^cuda device' "$W/logs/c-backends.log" || true)"
  isolation_check || STOP="the build did not use the bundle alone"
  # a command without --backend fails or skips at once: its cap need not be kept
  local c
  for c in calibrate validate; do
    if ! with_libs "$MB" "$c" --help 2>/dev/null | grep -q -- '--backend'; then
      case "$c" in calibrate) CAP[g-calibrate]=10 ;; validate) CAP[h-validate]=5 ;; esac
      detail "moebench $c has no --backend: its step's cap is now ${CAP[$([ "$c" = calibrate ] && echo g-calibrate || echo h-validate)]}s"
    fi
  done
}

step_d_generate() {
  local log="$W/logs/d-generate.log" rc args
  args=(generate --model-dir "$ROOT/tests/fixtures/mixtral-tiny" --prompt-ids "1,2,3" --gen-len 8 --policy ondemand)
  tmo_libs "$MB" "${args[@]}" --backend cpu >"$W/logs/d-generate-cpu.log" 2>&1
  local cpu_rc=$?
  if [ "$REHEARSE" = 1 ]; then
    STEP_STATUS=SKIP
    if [ "$cpu_rc" = 0 ]; then
      fig "rehearsal: no GPU; the same generate on the cpu backend runs with the bundle's libraries"
    else
      fig "rehearsal: no GPU; but the cpu generate failed (exit $cpu_rc): $(tail -1 "$W/logs/d-generate-cpu.log")"
      REQ_BAD+=("d-generate(cpu)")
    fi
    return
  fi
  tmo_libs "$MB" "${args[@]}" --backend cuda >"$log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    fail "exit $rc: $(grep -v '^seq' "$log" | tail -1 | cut -c1-300)"
    STOP="generate on cuda failed (d)"
    return
  fi
  fig "$(grep -o '[0-9.]* generated tokens/s' "$log" | head -1)"
  if [ "$cpu_rc" = 0 ] && [ "$(grep '^seq' "$log")" = "$(grep '^seq' "$W/logs/d-generate-cpu.log")" ]; then
    fig "tokens equal the cpu backend's"
  else
    fig "tokens DIFFER from the cpu backend's (or the cpu run failed)"
  fi
  detail "$(grep -m1 '^seq' "$log")"
}

step_e_ctest() {
  local log="$W/logs/e-ctest.log" rc
  if [ "$REHEARSE" = 1 ]; then
    tmo_libs "$BUILD/tests/test_cuda" >"$W/logs/e-test_cuda-rehearsal.log" 2>&1
    rc=$?
    STEP_STATUS=SKIP
    fig "rehearsal: no GPU; test_cuda loads with the bundle's libraries and exits $rc (77 = no device)"
    return
  fi
  (cd "$BUILD" && tmo_libs env CK_FORK=no ctest -R '^(cuda|cuda_switches|backend_(conformance|math|table|host_stream|urgent))$' --output-on-failure) >"$log" 2>&1
  rc=$?
  local lines
  lines="$(grep -E 'Test +#[0-9]+: ' "$log" | sed -E 's/^ *[0-9]+\/[0-9]+ +Test +#[0-9]+: +//; s/ \.+/ /; s/ +/ /g')"
  while IFS= read -r l; do [ -n "$l" ] && detail "$l"; done <<<"$lines"
  fig "$(grep -m1 'tests passed' "$log" || echo "no ctest summary")"
  if timed_out "$rc"; then fail "ctest timed out"; return; fi
  [ "$rc" = 0 ] || fail "ctest exit $rc"
  if grep -Eq 'Test +#[0-9]+: (cuda|backend_(conformance|math|table|host_stream|urgent)) .*(Skipped|Not Run)' "$log"; then fail "a test was skipped: no device?"; fi
  [ -n "$lines" ] || fail "ctest ran no test"
}

SANITIZER=""
find_sanitizer() {
  SANITIZER="$(command -v compute-sanitizer 2>/dev/null || true)"
  local d
  for d in "${CUDA_HOME:-}" "$(dirname "$(dirname "${NVCC:-/x/x}")")" /usr/local/cuda; do
    [ -n "$SANITIZER" ] && break
    [ -n "$d" ] || continue
    if [ -x "$d/bin/compute-sanitizer" ]; then SANITIZER="$d/bin/compute-sanitizer"
    elif [ -x "$d/compute-sanitizer/compute-sanitizer" ]; then SANITIZER="$d/compute-sanitizer/compute-sanitizer"; fi
  done
  [ -n "$SANITIZER" ]
}

# sanitize TOOL: the conformance suites' cuda case under compute-sanitizer.
# MOE_CONFORMANCE_BACKEND=cuda for a suite that honours it; CK_RUN_CASE keeps
# Check to the cuda backend's one-thread case either way.
sanitize() {
  local tool="$1" log="$W/logs/f-$1.log" rc errs
  if [ "$REHEARSE" = 1 ]; then
    STEP_STATUS=SKIP
    if find_sanitizer; then fig "rehearsal: no GPU; compute-sanitizer found"; else fig "rehearsal: no GPU; compute-sanitizer not found here"; fi
    return
  fi
  if ! find_sanitizer; then
    STEP_STATUS=SKIP; fig "compute-sanitizer not found"
    note "f-$tool: compute-sanitizer not found (not a failure)"
    return
  fi
  # the conformance suites one after the other, in one log and within the
  # step's cap; rc is the first suite's that did not exit 0
  local suite src
  rc=0
  : >"$log"
  for suite in test_backend_conformance test_backend_math test_backend_table test_backend_host_stream; do
    echo "=== $suite" >>"$log"
    tmo_libs env CK_FORK=no MOE_CONFORMANCE_BACKEND=cuda CK_RUN_CASE="cuda, 1 thread" CK_DEFAULT_TIMEOUT=600 \
      "$SANITIZER" --tool "$tool" --error-exitcode 86 --print-limit 40 \
      "$BUILD/tests/$suite" >>"$log" 2>&1
    src=$?
    [ "$rc" != 0 ] || rc=$src
    if timed_out "$src"; then break; fi
  done
  if grep -qiE 'device (is )?not supported|unsupported (device|gpu)|not supported on this (device|platform)' "$log"; then
    STEP_STATUS=SKIP; fig "the sanitizer does not support this device"
    note "f-$tool: $(grep -m1 -iE 'not supported|unsupported' "$log" | cut -c1-200) (not a failure)"
    return
  fi
  errs="$(grep -cE '^========= (Invalid|Race|Error|Program hit|Uninitialized|Leaked|Malloc|Out of range)' "$log")"
  local checks
  # the checks of each suite's cuda case, summed
  checks="$(awk '/^=== / {f = 0} /^== cuda, 1 thread/ {f = 1} f && /Checks: / {sub(/.*Checks: /, ""); sub(/,.*/, ""); n += $0; f = 0} END {if (n) print n}' "$log")"
  if timed_out "$rc"; then
    if [ "$errs" -gt 0 ]; then fail "timed out at the cap with $errs reports so far"; else STEP_STATUS=SKIP; fig "timed out at the cap (${STEP_CAP}s) with no report so far"; fi
    note "f-$tool: timed out after ${STEP_CAP}s (partial log kept; not a failure unless it reported errors)"
    return
  fi
  fig "$(grep -m1 -E '(ERROR|RACECHECK) SUMMARY' "$log" | sed 's/^========= //' || echo 'no sanitizer summary')"
  fig "cuda case checks: ${checks:-none}"
  if [ "$rc" = 86 ] || [ "$errs" -gt 0 ]; then fail "$errs reports"; return; fi
  [ "$rc" != 77 ] || { fail "the suite's cuda backend could not run under the sanitizer (exit 77: no device?)"; return; }
  [ "$rc" = 0 ] || { fail "the suite exited $rc under the sanitizer"; return; }
  if [ -z "$checks" ] || [ "$checks" = 0 ]; then fail "the cuda case ran no check (CK_RUN_CASE='cuda, 1 thread' matched nothing?)"; fi
}
step_f_memcheck() { sanitize memcheck; }
step_f_racecheck() { sanitize racecheck; }

MEASURED_PROFILE="$W/h200-measured.json"
step_g_calibrate() {
  local log="$W/logs/g-calibrate.log" rc
  local has_backend=0
  with_libs "$MB" calibrate --help 2>/dev/null | grep -q -- '--backend' && has_backend=1
  if [ "$REHEARSE" = 1 ]; then
    STEP_STATUS=SKIP
    if [ "$has_backend" = 1 ]; then fig "rehearsal: no GPU; calibrate has --backend"
    else fig "rehearsal: no GPU; WARNING: moebench calibrate has no --backend (cpu only): the real run FAILS here"; fi
    helper profile workloads/hardware/h200.json workloads/hardware/h200.json - >"$W/profile-compare-rehearsal.md" 2>&1 ||
      fig "the comparison helper failed: $(tail -1 "$W/profile-compare-rehearsal.md")"
    return
  fi
  if [ "$has_backend" = 1 ]; then
    tmo_libs "$MB" calibrate --backend cuda --name h200-measured -o "$MEASURED_PROFILE" >"$log" 2>&1
    rc=$?
    if [ "$rc" != 0 ] || [ ! -s "$MEASURED_PROFILE" ]; then
      if timed_out "$rc"; then fail "calibrate timed out"; else fail "calibrate exit $rc: $(tail -1 "$log" | cut -c1-300)"; fi
    else
      fig "$(grep -m1 '^wrote' "$log" | cut -c1-300)"
    fi
  else
    fail "moebench calibrate has no --backend: it measures the cpu backend only (wanted: calibrate --backend cuda)"
  fi
  local prof=-
  [ -s "$MEASURED_PROFILE" ] && prof="$MEASURED_PROFILE"
  local facts=-
  [ -s "$FACTS" ] && facts="$FACTS"
  if helper profile "$prof" workloads/hardware/h200.json "$facts" >"$W/profile-compare.md" 2>&1; then
    while IFS= read -r l; do detail "$l"; done <"$W/profile-compare.md"
  fi
}

step_h_validate() {
  local log="$W/logs/h-validate.log" rc
  local has_backend=0
  with_libs "$MB" validate --help 2>/dev/null | grep -q -- '--backend' && has_backend=1
  if [ "$REHEARSE" = 1 ]; then
    STEP_STATUS=SKIP
    if [ "$has_backend" = 1 ]; then fig "rehearsal: no GPU; validate has --backend"
    else fig "rehearsal: no GPU; validate has no --backend: the real run skips it (i has the sim-vs-cuda table)"; fi
    return
  fi
  if [ "$has_backend" = 0 ]; then
    STEP_STATUS=SKIP
    fig "moebench validate measures the cpu backend only (no --backend); step i holds the measured-vs-modeled table"
    return
  fi
  local hw=()
  [ -s "$MEASURED_PROFILE" ] && hw=(--hardware "$MEASURED_PROFILE")
  tmo_libs "$MB" validate --backend cuda --preset switch-base-8 "${hw[@]+"${hw[@]}"}" --reps 1 \
    --prompt-len 32 --gen-len 16 >"$W/validate-cuda.md" 2>"$log"
  rc=$?
  if [ "$rc" != 0 ]; then
    if timed_out "$rc"; then fail "validate timed out"; else fail "validate exit $rc: $(tail -1 "$log" | cut -c1-300)"; fi
    return
  fi
  fig "switch-base-8, 32+16 tokens, 1 rep, profile ${hw[1]:-calibrated in the run}"
  local l
  while IFS= read -r l; do detail "$l"; done < <(grep -E '^\| [a-z]' "$W/validate-cuda.md" | grep -v '^| policy')
}

# sweep_cuda SUITE PREFIX WARMUP: a sweep with its figures
sweep_figures() { # CSV: compact figure, details
  local csv="$1" out
  if [ ! -s "$csv" ]; then fail "no result rows"; return 1; fi
  local bw
  bw="$(sed -n 's/^h2d_pinned_gbps=//p' "$FACTS" 2>/dev/null | head -1)"
  if out="$(helper figures "$csv" "${bw:-0}")"; then :; else fail "a row is not ok"; fi
  fig "$(head -1 <<<"$out")"
  local l
  while IFS= read -r l; do detail "$l"; done < <(tail -n +2 <<<"$out")
}

# The headline's edits for a real GPU: its own link, the device's capacity
# (the suite's 1 GiB row and the emulated host's cap are this cpu's), and
# with python3 the paper's four and pregated-spec only (the host-compute
# class at capacity is gpu-only's work again: time the step cannot spare)
HEADLINE_GPU_EDITS=(-link_ratio -link_gbps -device_mem -host_gbps -host_threads)
HEADLINE_GPU_POLICIES='policies=["gpu-only","ondemand","prefetch-all","pregated","pregated-spec"]'

step_i_headline() {
  local suite="$W/headline-cuda-suite.json" simsuite="$W/headline-sim-h200-suite.json" rc
  local pol=()
  [ "$HAVE_PY" = 1 ] && pol=("$HEADLINE_GPU_POLICIES")
  suite_from workloads/suites/headline.json "$suite" 'backend="cuda"' "${HEADLINE_GPU_EDITS[@]}" ${pol[@]+"${pol[@]}"} ||
    { fail "cannot write the cuda suite"; return; }
  # modeled first: it takes a second and gives the table something to stand beside
  if suite_from workloads/suites/headline.json "$simsuite" 'backend="sim"' 'hardware="h200"' "${HEADLINE_GPU_EDITS[@]}" ${pol[@]+"${pol[@]}"} 2>/dev/null; then
    tmo_libs "$MB" sweep "$simsuite" -o "$W/headline-sim-h200" >"$W/logs/i-headline-sim.log" 2>&1 ||
      detail "the sim sweep failed: $(tail -1 "$W/logs/i-headline-sim.log")"
  else
    detail "no modeled (sim) run beside it: writing its suite needs python3"
  fi
  if [ "$REHEARSE" = 1 ]; then
    STEP_STATUS=SKIP
    local out
    if out="$(helper figures "$W/headline-sim-h200.csv" 2>&1)"; then
      fig "rehearsal: no GPU; suites written, the sim (h200) sweep and its figures ok: $(head -1 <<<"$out" | cut -c1-200)"
    else
      fail "rehearsal: no GPU; but the figures of the sim (h200) sweep failed: $(tail -1 <<<"$out" | cut -c1-200)"
    fi
    return
  fi
  tmo_libs "$MB" sweep "$suite" -o "$W/headline-cuda" >"$W/logs/i-headline.log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    if timed_out "$rc"; then fail "sweep timed out (rows so far kept)"; else fail "sweep exit $rc: $(tail -1 "$W/logs/i-headline.log" | cut -c1-300)"; fi
  fi
  sweep_figures "$W/headline-cuda.csv" || return
  with_libs "$MB" report "$W/headline-cuda.csv" --paper >"$W/headline-cuda.md" 2>>"$W/logs/i-headline.log" ||
    fail "report --paper failed"
  if [ -s "$W/headline-sim-h200.csv" ]; then
    helper modeled "$W/headline-cuda.csv" "$W/headline-sim-h200.csv" >"$W/headline-measured-vs-modeled.md" 2>&1 &&
      detail "measured (cuda) vs modeled (sim, workloads/hardware/h200.json):" &&
      while IFS= read -r l; do detail "$l"; done <"$W/headline-measured-vs-modeled.md"
  fi
}

# Overtakable copies on cuda (MOE_CUDA_OVERTAKE=1; cuda_feed.cu): the
# suites that hold copies to the contract, their cuda cases, with them;
# then pregated and pregated-spec, copies in issue order (0) and
# overtaking (1), two turns each, alternated.  Figures: the pregated rows'
# decode ms/token.
step_o_overtake() {
  local log="$W/logs/o-overtake-ctest.log" rc out v
  if [ "$REHEARSE" = 1 ]; then
    tmo_libs env MOE_CUDA_OVERTAKE=1 "$BUILD/tests/test_backend_urgent" >"$W/logs/o-rehearsal.log" 2>&1
    rc=$?
    STEP_STATUS=SKIP
    fig "rehearsal: no GPU; test_backend_urgent with MOE_CUDA_OVERTAKE=1 exits $rc (its cpu cases ran)"
    return
  fi
  (cd "$BUILD" && tmo_libs env CK_FORK=no MOE_CUDA_OVERTAKE=1 MOE_CONFORMANCE_BACKEND=cuda ctest -R '^backend_(conformance|host_stream|urgent)$' --output-on-failure) >"$log" 2>&1
  rc=$?
  fig "cuda cases with MOE_CUDA_OVERTAKE=1: $(grep -m1 'tests passed' "$log" || echo "no ctest summary")"
  if [ "$rc" != 0 ]; then fail "ctest exit $rc"; return; fi
  # the backend calls per decode step, counted by the trace, at the launch
  # overhead: the upper bound of what graph mode (step p) can save
  out="$W/logs/o-trace.log"
  if tmo_libs "$MB" run --backend cuda --preset switch-base-8 --policy pregated --prompt-len 16 \
       --gen-len 16 --trace "$W/o-pregated-trace.json" >"$out" 2>&1; then
    v="$(sed -n 's/^per decode step (median, counted by the trace): \([0-9.]*\) backend calls, \([0-9.]*\) host waits.*/\1 \2/p' "$out")"
    [ -n "$v" ] && detail "$(awk -v c="${v% *}" -v w="${v#* }" 'BEGIN {printf "pregated, per decode step (counted by the trace): %s backend calls, %s host waits; at workloads/hardware/h200.json'"'"'s 4 us a launch (an estimate; g measures it) the calls cost about %.2f ms of host time a step: the most graph mode (step p) could save", c, w, c * 0.004}')"
  else
    detail "the traced pregated run failed: $(tail -1 "$out" | cut -c1-200)"
  fi
  rm -f "$W/o-pregated-trace.json" # the figures are in the log; the archive keeps logs small
  switch_turns MOE_CUDA_OVERTAKE
}

# switch_turns VAR: bench-policies gpu-only/pregated/pregated-spec on
# switch-base-8 with VAR=0, 1, 0, 1 (alternated, so drift shows as drift);
# the figures are the pregated rows' decode ms/token per turn (measured),
# and a turn whose pregated-spec logits are not gpu-only's bit for bit
# fails the step.  The backend's stderr stays in the turn's log.
switch_turns() {
  local var="$1" turn ms=() out rc v diff
  for turn in 0 1 0 1; do
    # a turn takes about 10 s here; the turns so far are kept when time runs short
    if [ "$(step_left)" -lt 15 ]; then detail "turns cut at ${#ms[@]} of 4: the step's cap"; break; fi
    out="$W/logs/$var-bench-$turn-${#ms[@]}.log"
    tmo_libs env "$var=$turn" "$MB" bench-policies --backend cuda --preset switch-base-8 \
      --policies gpu-only,pregated,pregated-spec --reps 3 --prompt-len 16 --gen-len 32 >"$out" 2>&1
    rc=$?
    if [ "$rc" != 0 ]; then fail "bench-policies ($var=$turn) exit $rc: $(tail -1 "$out" | cut -c1-200)"; return; fi
    v="$(awk -F'|' '$2 ~ /^ pregated(-spec)? $/ {gsub(/ /, "", $2); gsub(/ /, "", $6); printf "%s %s ms, ", $2, $6}' "$out")"
    ms+=("${v%, }")
    # pregated-spec routes conventionally: its logits are gpu-only's, bit for bit
    diff="$(awk -F'|' '$2 == " pregated-spec " {gsub(/ /, "", $15); print $15}' "$out")"
    [ "$diff" = 0 ] || fail "$var=$turn: pregated-spec's max logit diff against gpu-only is '${diff:-missing}', not 0"
    detail "$var=$turn: ${v%, } (decode ms/token, measured; medians of 3)"
  done
  fig "decode ms/token per turn ($var 0, 1, 0, 1): $(printf '%s | ' "${ms[@]}" | sed 's/ | $//')"
}

# CUDA graph mode (MOE_CUDA_GRAPHS=1, off by default until this step has
# passed on a GPU): the contract's cases captured, what the graphs held,
# and the same turns as o.
step_p_graphs() {
  local log="$W/logs/p-graphs-ctest.log" rc rc2 out v
  if [ "$REHEARSE" = 1 ]; then
    tmo_libs "$BUILD/tests/test_capture_gate" >"$W/logs/p-rehearsal.log" 2>&1
    rc=$?
    tmo_libs "$BUILD/tests/test_cuda_switches" >>"$W/logs/p-rehearsal.log" 2>&1
    rc2=$?
    STEP_STATUS=SKIP
    fig "rehearsal: no GPU; test_capture_gate exits $rc, test_cuda_switches $rc2 (the switches are refused or accepted without a device)"
    [ "$rc" = 0 ] && [ "$rc2" = 0 ] || fail "a graph-mode test that needs no GPU failed (logs/p-rehearsal.log)"
    return
  fi
  (cd "$BUILD" && tmo_libs env CK_FORK=no MOE_CUDA_GRAPHS=1 MOE_CONFORMANCE_BACKEND=cuda ctest -R '^backend_(conformance|host_stream|urgent)$' --output-on-failure) >"$log" 2>&1
  rc=$?
  fig "cuda cases with MOE_CUDA_GRAPHS=1: $(grep -m1 'tests passed' "$log" || echo "no ctest summary")"
  if [ "$rc" != 0 ] && ! timed_out "$rc"; then
    # cuBLAS's kernels load at their first use, inside a capture here (lazy
    # module loading, the default): tell whether eager loading helps
    (cd "$BUILD" && tmo_libs env CK_FORK=no MOE_CUDA_GRAPHS=1 CUDA_MODULE_LOADING=EAGER MOE_CONFORMANCE_BACKEND=cuda ctest -R '^backend_(conformance|host_stream|urgent)$') >"$W/logs/p-graphs-eager.log" 2>&1
    detail "again with CUDA_MODULE_LOADING=EAGER: exit $? ($(grep -m1 'tests passed' "$W/logs/p-graphs-eager.log" || echo "no ctest summary"))"
  fi
  if [ "$rc" != 0 ]; then fail "ctest exit $rc"; return; fi
  # the same tokens in both modes on a paper-sized stack (the cuda suite
  # compares logits bit for bit on the tiny fixtures)
  local g toks=()
  for g in 0 1; do
    tmo_libs env MOE_CUDA_GRAPHS=$g "$MB" generate --backend cuda --preset switch-base-8 --policy pregated \
      --prompt-len 16 --gen-len 32 >"$W/logs/p-generate-$g.log" 2>&1
    rc=$?
    if [ "$rc" != 0 ]; then fail "generate with MOE_CUDA_GRAPHS=$g exit $rc: $(tail -1 "$W/logs/p-generate-$g.log" | cut -c1-200)"; return; fi
    toks+=("$(grep '^seq ' "$W/logs/p-generate-$g.log")")
  done
  if [ -z "${toks[0]}" ] || [ "${toks[0]}" != "${toks[1]}" ]; then
    fail "generate: the tokens differ between graph mode off and on (or there are none): '${toks[0]:0:80}' vs '${toks[1]:0:80}'"; return
  fi
  detail "generate switch-base-8 pregated, 32 tokens: the same tokens with graph mode off and on"
  # what the graphs held: the backend's counts, which run prints
  out="$W/logs/p-run.log"
  if tmo_libs env MOE_CUDA_GRAPHS=1 "$MB" run --backend cuda --preset switch-base-8 --policy pregated \
       --prompt-len 16 --gen-len 16 --trace "$W/p-trace.json" >"$out" 2>&1; then
    v="$(grep -m1 '^cuda graphs:' "$out")"
    [ -n "$v" ] || { fail "run with MOE_CUDA_GRAPHS=1 printed no 'cuda graphs:' line: graph mode did not run"; return; }
    detail "pregated, switch-base-8, 16+16 tokens (traced): $v"
    # beside it, what the gate's model predicts from the same calls
    detail "$(grep -m1 "^graph mode's model" "$out" || echo "no model line")"
  else
    fail "the pregated run with MOE_CUDA_GRAPHS=1 failed: $(tail -1 "$out" | cut -c1-200)"; return
  fi
  rm -f "$W/p-trace.json" # the figures are in the log
  switch_turns MOE_CUDA_GRAPHS
}

# A paper-scale model on cuda: gpu-paper's workload and policies, one model.
paper_model() { # PRESET
  local m="$1" suite="$W/paper-$1-suite.json" rc
  suite_from workloads/suites/gpu-paper.json "$suite" "models=[\"$m\"]" "name=\"gpu-paper-$m\"" 'backend="cuda"' ||
    { fail "cannot write the suite"; return; }
  if [ "$REHEARSE" = 1 ]; then STEP_STATUS=SKIP; fig "rehearsal: no GPU; suite written"; return; fi
  tmo_libs "$MB" sweep "$suite" -o "$W/paper-$m-cuda" >"$W/logs/j-$m.log" 2>&1
  rc=$?
  if [ "$rc" != 0 ]; then
    if timed_out "$rc"; then fail "sweep timed out at the cap (rows so far kept)"; else fail "sweep exit $rc: $(grep -v '^\[' "$W/logs/j-$m.log" | tail -1 | cut -c1-300)"; fi
  fi
  sweep_figures "$W/paper-$m-cuda.csv" || return
  fig "$(helper setup "$W/logs/j-$m.log" "$W/paper-$m-cuda.csv" 0)"
}
step_j_64() { paper_model switch-base-64; }
step_j_128() { paper_model switch-base-128; }

step_k_rest() {
  if [ "$REHEARSE" = 1 ]; then STEP_STATUS=SKIP; fig "rehearsal: no GPU"; return; fi
  local m gb avail est left ran=() skipped=() failed=0 save_cap save_figs
  avail="$(awk '/^MemAvailable/ {printf "%.0f", $2 / 1048576}' /proc/meminfo)"
  for m in switch-base-8 switch-base-16 switch-base-32 switch-base-256 switch-large-128; do
    # host bytes of the model: "dense weights X GB, experts Y GB" from plan
    gb="$(with_libs "$MB" plan --preset "$m" 2>/dev/null | head -1 |
          sed -n 's/.*dense weights \([0-9.]*\) GB, experts \([0-9.]*\) GB.*/\1 \2/p' | awk '{print int($1 + $2 + 0.999)}')"
    [ -n "$gb" ] || gb=999
    est=$(( 20 + gb * 4 )) # synthesis, pinning and four short runs, generously
    left=$(( STEP_CAP - ($(now) - STEP_T0) ))
    if [ $(( gb * 13 / 10 )) -gt "${avail:-0}" ]; then skipped+=("$m (${gb} GB, host memory ${avail} GiB)"); continue; fi
    if [ "$est" -gt "$left" ]; then skipped+=("$m (~${est}s > ${left}s left)"); continue; fi
    save_cap="$STEP_CAP" save_figs="$STEP_FIGS"
    STEP_CAP=$(( $(now) - STEP_T0 + est )) STEP_FIGS="" STEP_STATUS=PASS
    paper_model "$m"
    case "$STEP_STATUS/$STEP_FIGS" in
      FAIL/*"timed out"*) ran+=("$m cut at its ${est}s estimate") ;; # not a failure of the code
      FAIL/*) ran+=("$m FAIL"); failed=1 ;;
      *) ran+=("$m $STEP_STATUS") ;;
    esac
    detail "$m: $STEP_STATUS: $STEP_FIGS"
    STEP_CAP="$save_cap" STEP_FIGS="$save_figs"
  done
  STEP_STATUS=PASS
  [ "$failed" = 1 ] && STEP_STATUS=FAIL
  [ "${#ran[@]}" -gt 0 ] || STEP_STATUS=SKIP
  [ "${#ran[@]}" -eq 0 ] || fig "ran: $(printf '%s, ' "${ran[@]}" | sed 's/, $//')"
  [ "${#skipped[@]}" -eq 0 ] || fig "not run: $(printf '%s, ' "${skipped[@]}" | sed 's/, $//')"
}

# ------------------------------------------------------------------ header
commit="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null || true)"
if [ -n "$commit" ]; then
  [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null | head -1)" ] || commit="$commit (with uncommitted changes)"
else
  commit="${COMMIT_ARG:-unknown} (no .git here${COMMIT_ARG:+; given by --commit})"
fi
fingerprint="$(cd "$ROOT" && find CMakeLists.txt engine baselines harness tests tools -type f \
  \( -name '*.c' -o -name '*.h' -o -name '*.cu' -o -name 'CMakeLists.txt' -o -name '*.sh' \) -print0 2>/dev/null |
  LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
{
  echo "# gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ)$([ "$REHEARSE" = 1 ] && echo ' REHEARSAL (no GPU)')"
  echo "# commit $commit; sources sha256 $fingerprint (engine, baselines, harness, tests, tools, CMakeLists)"
  echo "# host $(uname -srm), $(nproc) cores, $(awk '/^MemTotal/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo), glibc $(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')"
  echo "# deadline ${DEADLINE}s, build $BUILD, bundle $BUNDLE"
  echo "# lines: PASS|FAIL|SKIP <step> <seconds>s <figures>; NOTE lines are not failures"
} >>"$SUMMARY"
cat "$SUMMARY"

# the caps: the required steps' must fit in the deadline
req_sum=0 all_sum=0
for s in "${ORDER[@]}"; do
  all_sum=$(( all_sum + CAP[$s] ))
  [ "${KIND[$s]}" = required ] && req_sum=$(( req_sum + CAP[$s] ))
done
caps_line="required caps ${req_sum}s + ${END_MARGIN}s for the archive <= deadline ${DEADLINE}s; all caps ${all_sum}s (a wanted step starts only if the required ones after it keep their caps, an optional one if the required and wanted ones do; k takes what remains)"
[ -n "$CAP_NOTE" ] && caps_line="$caps_line; $CAP_NOTE"
if [ $(( req_sum + END_MARGIN )) -le "$DEADLINE" ]; then
  echo "PASS caps 0s $caps_line" | tee -a "$SUMMARY"
elif [ "$REHEARSE" = 1 ]; then
  echo "FAIL caps 0s $caps_line" | tee -a "$SUMMARY"; REQ_BAD+=(caps)
else
  note "caps: $caps_line: the required steps may not all fit"
fi

# ------------------------------------------------------------------ run
run_step a-env step_a_env
run_step a-deps step_a_deps
run_step a-facts step_a_facts
run_step b-sampler step_b_sampler
run_step c-build step_c_build
run_step d-generate step_d_generate
export CK_FORK=no
run_step e-ctest step_e_ctest
run_step o-overtake step_o_overtake
run_step p-graphs step_p_graphs
run_step f-memcheck step_f_memcheck
run_step f-racecheck step_f_racecheck
run_step g-calibrate step_g_calibrate
run_step h-validate step_h_validate
run_step i-headline step_i_headline
run_step j-switch-base-64 step_j_64
run_step j-switch-base-128 step_j_128
run_step k-paper-rest step_k_rest
stop_sampler

# ------------------------------------------------------------------ the end: peak, archive, count
if [ -s "$MEM_FILE" ]; then
  echo "# driver memory.used peak over the run: $(awk '$1 ~ /^[0-9]+$/ {if ($1 > m) m = $1} END {print m + 0}' "$MEM_FILE") MiB ($(wc -l <"$MEM_FILE") samples, every 200 ms)" >>"$SUMMARY"
fi
# loose copies for a quick look (the archive holds them too)
[ -s "$FACTS" ] && cp "$FACTS" "$OUT_DIR/cuda-facts.txt"
[ -s "$W/headline-cuda.csv" ] && cp "$W/headline-cuda.csv" "$OUT_DIR/headline-cuda.csv"
[ -s "$W/headline-cuda.md" ] && cp "$W/headline-cuda.md" "$OUT_DIR/headline-cuda.md"
[ -s "$MEASURED_PROFILE" ] && cp "$MEASURED_PROFILE" "$OUT_DIR/h200-measured.json"
# a log over 4 MiB keeps its first and last 2 MiB (the archive must stay small)
while IFS= read -r -d '' f; do
  { head -c 2097152 "$f"; printf '\n[... cut by gpu_check.sh ...]\n'; tail -c 2097152 "$f"; } >"$f.cut" && mv -f "$f.cut" "$f"
done < <(find "$W" -type f -size +4M -print0)
rm -f "$W/cuda_facts" "$W"/*.lock
end_s=$(elapsed)
status_word=PASS
[ "${#REQ_BAD[@]}" -eq 0 ] || status_word=FAIL
{
  echo "# done in ${end_s}s of ${DEADLINE}s: $status_word$([ "${#REQ_BAD[@]}" -gt 0 ] && echo " (required not passed: ${REQ_BAD[*]})")$([ "${#FAILED[@]}" -gt 0 ] && echo "; failed: ${FAILED[*]}")"
} >>"$SUMMARY"
cp "$SUMMARY" "$W/summary.txt"
if ! { tar -czf "$OUT_DIR/gpu-check.tar.gz.tmp" -C "$BUILD" gpu-check 2>/dev/null &&
        mv -f "$OUT_DIR/gpu-check.tar.gz.tmp" "$OUT_DIR/gpu-check.tar.gz"; }; then
  echo "FAIL archive 0s tar failed" >>"$SUMMARY"
  REQ_BAD+=(archive)
fi
asz="$(stat -c %s "$OUT_DIR/gpu-check.tar.gz" 2>/dev/null || echo 0)"
if [ "$asz" -gt 16777216 ]; then echo "FAIL archive 0s gpu-check.tar.gz is $asz bytes, over 16 MiB" >>"$SUMMARY"; REQ_BAD+=(archive); fi
nfiles="$(find "$OUT_DIR" -type f | wc -l)"
if [ "$nfiles" -gt 8 ]; then
  echo "FAIL out 0s $OUT_DIR holds $nfiles files (at most 8 come back): $(find "$OUT_DIR" -type f -printf '%P ' | cut -c1-300)" >>"$SUMMARY"
  REQ_BAD+=(out-files)
else
  echo "# $OUT_DIR: $nfiles files ($(find "$OUT_DIR" -type f -printf '%P\n' | sort | paste -sd' ' -)), archive $asz bytes" >>"$SUMMARY"
fi
sed -n '/^# done in /,$p' "$SUMMARY"
[ "${#REQ_BAD[@]}" -eq 0 ]
