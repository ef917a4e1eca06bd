#!/usr/bin/env bash
# gpu_kit_test.sh: the GPU kit checked without a GPU or the network (ctest
# gpu_kit).  The scripts parse (bash -n) and answer --help; then, when the
# dependency bundle is there (tools/gpu_deps.sh makes .gpu-deps), it is
# verified (manifest sha256s, every header and library the build needs,
# pkg-config answering from it), and copies of it that lack a package or
# whose manifest disagrees with a .deb are refused, naming what is wrong.
# Exit status: 0 pass; 1 fail; 77 skipped (no bundle: only the parse checks ran).
#
#   bash tests/gpu_kit_test.sh [SOURCE_DIR]      bundle: $MOE_GPU_DEPS or SOURCE_DIR/.gpu-deps
set -uo pipefail

src="${1:-$(dirname "${BASH_SOURCE[0]}")/..}"
src="$(cd "$src" && pwd)" || { echo "gpu_kit: no source tree at ${1:-}" >&2; exit 1; }
bundle="${MOE_GPU_DEPS:-$src/.gpu-deps}"
check="$src/harness/gpu_check.sh"
deps="$src/tools/gpu_deps.sh"
failures=0
ok() { echo "ok   $*"; }
bad() { echo "FAIL $*"; failures=$((failures + 1)); }

for f in "$check" "$deps" "$src/tests/gpu_kit_test.sh"; do
  if bash -n "$f"; then ok "bash -n $(basename "$f")"; else bad "bash -n $(basename "$f")"; fi
done
for f in "$check" "$deps"; do
  if bash "$f" --help >/dev/null; then ok "$(basename "$f") --help"; else bad "$(basename "$f") --help"; fi
  bash "$f" --no-such-flag >/dev/null 2>&1
  rc=$?
  if [ "$rc" = 2 ]; then ok "$(basename "$f") refuses an unknown flag (2)"; else bad "$(basename "$f") --no-such-flag exit $rc, want 2"; fi
done
if [ -f "$src/tools/cuda_facts.cu" ]; then ok "tools/cuda_facts.cu present"; else bad "tools/cuda_facts.cu missing"; fi

if [ ! -f "$bundle/MANIFEST" ] || [ ! -f "$bundle/gpu-deps.tar.gz" ]; then
  echo "skip the bundle checks: no bundle at $bundle (make it with tools/gpu_deps.sh)"
  [ "$failures" = 0 ] || exit 1
  exit 77
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu-kit-test.XXXXXX")" || { echo "gpu_kit: mktemp failed" >&2; exit 1; }
trap 'rm -rf -- "$tmp"' EXIT

# the bundle as it is
if out="$(bash "$check" --check-bundle --bundle "$bundle" 2>&1)"; then ok "bundle: $out"; else bad "bundle refused: $out"; fi

# without_pkg NAME DIR: a copy of the bundle lacking package NAME, its
# manifest consistent (so only the missing files can refuse it)
without_pkg() {
  local name="$1" dir="$2" file
  mkdir -p "$dir/x" || return 1
  tar -xzf "$bundle/gpu-deps.tar.gz" -C "$dir/x" || return 1
  file="$(awk -F'\t' -v n="$name" '$1 == n {print $4}' "$bundle/MANIFEST")"
  [ -n "$file" ] || { echo "no package $name in the manifest" >&2; return 1; }
  rm -f -- "$dir/x/debs/$file"
  (cd "$dir/x" && tar -czf ../gpu-deps.tar.gz debs) || return 1
  rm -rf -- "$dir/x"
  awk -F'\t' -v n="$name" -v s="$(sha256sum "$dir/gpu-deps.tar.gz" | cut -d' ' -f1)" '
    /^# archive / {print "# archive gpu-deps.tar.gz sha256 " s " bytes 0"; next}
    $1 != n' "$bundle/MANIFEST" >"$dir/MANIFEST"
}

# a bundle lacking libjansson-dev: refused, naming jansson.h and libjansson.so
if without_pkg libjansson-dev "$tmp/nojansson"; then
  if out="$(bash "$check" --check-bundle --bundle "$tmp/nojansson" 2>&1)"; then
    bad "a bundle without libjansson-dev was accepted: $out"
  elif grep -q 'jansson\.h' <<<"$out" && grep -q 'libjansson\.so' <<<"$out"; then
    ok "a bundle without libjansson-dev refused: $out"
  else
    bad "a bundle without libjansson-dev refused without naming jansson.h and libjansson.so: $out"
  fi
else
  bad "could not make a bundle without libjansson-dev"
fi

# a bundle lacking check: refused, naming check.h
if without_pkg check "$tmp/nocheck"; then
  if out="$(bash "$check" --check-bundle --bundle "$tmp/nocheck" 2>&1)"; then
    bad "a bundle without check was accepted: $out"
  elif grep -q 'check\.h' <<<"$out"; then
    ok "a bundle without check refused: $out"
  else
    bad "a bundle without check refused without naming check.h: $out"
  fi
else
  bad "could not make a bundle without check"
fi

# a manifest whose sha256 for one .deb is wrong: refused, naming the package
mkdir -p "$tmp/badsum"
cp "$bundle/gpu-deps.tar.gz" "$tmp/badsum/"
awk -F'\t' 'BEGIN {OFS = "\t"} $1 == "libcsv3" {$5 = "0000000000000000000000000000000000000000000000000000000000000000"} {print}' \
  "$bundle/MANIFEST" >"$tmp/badsum/MANIFEST"
if out="$(bash "$check" --check-bundle --bundle "$tmp/badsum" 2>&1)"; then
  bad "a manifest with a wrong sha256 was accepted"
elif grep -q 'libcsv3: sha256' <<<"$out"; then
  ok "a wrong sha256 in the manifest refused: $out"
else
  bad "a wrong sha256 refused without naming libcsv3: $out"
fi

# an archive that is not the manifest's: refused
mkdir -p "$tmp/badarc"
cp "$bundle/MANIFEST" "$tmp/badarc/"
printf 'not a tarball\n' | gzip >"$tmp/badarc/gpu-deps.tar.gz"
if out="$(bash "$check" --check-bundle --bundle "$tmp/badarc" 2>&1)"; then
  bad "an archive that does not match the manifest was accepted"
else
  ok "a changed archive refused: $out"
fi

[ "$failures" = 0 ] || { echo "gpu_kit: $failures check(s) failed"; exit 1; }
echo "gpu_kit: all checks passed"
exit 0
