#!/usr/bin/env bash
# gpu_deps.sh: collect, on a Debian machine with apt, the packages the build
# needs that a bare CUDA image lacks (OpenBLAS, jansson, libcsv, Check and
# pkgconf, with their runtime dependencies), so that harness/gpu_check.sh can
# build on a lent GPU machine that has no package registry.  Writes, into
# DIR (default .gpu-deps at the top of the source tree, git-ignored):
#
#   gpu-deps.tar.gz   the .deb files (debs/*.deb), as apt-get download gives them
#   MANIFEST          one line per package: name, version, architecture, file,
#                     sha256 and size of its .deb; header lines (#) with the
#                     archive's sha256, the source distribution and the
#                     oldest glibc the packaged binaries accept
#
# harness/gpu_check.sh unpacks the .deb files into a private prefix (never
# into /) and builds against that prefix only.  docs/GPU.md has the details.
set -uo pipefail

usage() {
  cat <<'EOF'
usage: tools/gpu_deps.sh [--out DIR] [--help]

Downloads (apt-get download) the .deb files the build needs on a bare CUDA
machine and packs them into DIR/gpu-deps.tar.gz with DIR/MANIFEST (package,
version, architecture, file, sha256, bytes).  Runs apt-get update first when
a package has no download candidate.  Checks that every dependency of the
packages is either bundled or part of a CUDA image (libc, libgcc, libstdc++)
and that the bundle stays under 40 MB.

  --out DIR   where to write the bundle (default: .gpu-deps in the source tree)
  -h, --help  this text

Exit status: 0 written; 1 a failure (one line on stderr says which); 2 bad usage.
EOF
}

die() { echo "gpu_deps: $*" >&2; exit 1; }

# The packages, and why each is here.  Debian names (bookworm, amd64).
PKGS=(
  libopenblas-dev           # meta: pulls the pthread flavour below
  libopenblas-pthread-dev   # cblas.h, libopenblas.so, openblas.pc
  libopenblas0-pthread      # libopenblas.so.0 (runtime)
  libopenblas0              # meta: the runtime's alternatives
  libgfortran5              # libopenblas.so.0 needs libgfortran.so.5
  libquadmath0              # libgfortran.so.5 needs libquadmath.so.0
  libjansson-dev            # jansson.h, libjansson.so, jansson.pc
  libjansson4               # libjansson.so.4 (runtime)
  libcsv-dev                # csv.h, libcsv.so
  libcsv3                   # libcsv.so.3 (runtime)
  check                     # check.h, libcheck_pic.a, check.pc (Requires: libsubunit)
  libsubunit-dev            # libsubunit.so, libsubunit.pc (check.pc requires it)
  libsubunit0               # libsubunit.so.0 (runtime)
  pkgconf                   # pkg-config (the build reads check.pc's Requires through it)
  pkgconf-bin               # the pkgconf binary
  libpkgconf3               # libpkgconf.so.3, which pkgconf needs
)
# Dependencies a CUDA image already has, or that nothing in the build uses.
PRESENT=(libc6 libgcc-s1 libstdc++6 gcc-12-base mawk)
MAX_BYTES=$((40 * 1000 * 1000))

out=""
while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --out)
      if [ $# -lt 2 ] || [ -z "$2" ]; then echo "gpu_deps: --out needs a directory (see --help)" >&2; exit 2; fi
      out="$2"; shift 2 ;;
    --out=*) out="${1#--out=}"; [ -n "$out" ] || { echo "gpu_deps: --out needs a directory" >&2; exit 2; }; shift ;;
    *) echo "gpu_deps: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)" || die "cannot find the source tree"
[ -n "$out" ] || out="$root/.gpu-deps"

for tool in apt-get apt-cache dpkg-deb sha256sum tar gzip; do
  command -v "$tool" >/dev/null 2>&1 || die "needs $tool (run it on a Debian machine with apt)"
done
arch="$(dpkg --print-architecture 2>/dev/null)" || die "dpkg --print-architecture failed"
[ "$arch" = amd64 ] || die "this machine is $arch; the GPU machines are amd64 (x86-64)"

in_list() { # NAME LIST...
  local n="$1"; shift
  local x
  for x in "$@"; do [ "$x" = "$n" ] && return 0; done
  return 1
}

# Every hard dependency (or one alternative of it) is bundled or present.
# apt-cache depends prints each package's name unindented, then
# "  Depends: x" and " |Depends: x" (an alternative to the next line).
check_depends() {
  local deps line pkg="" a ok alts=() missing=()
  deps="$(apt-cache depends --no-recommends --no-suggests --no-enhances --no-conflicts \
            --no-breaks --no-replaces "${PKGS[@]}" 2>/dev/null)" || { echo "apt-cache depends failed"; return 1; }
  while IFS= read -r line; do
    case "$line" in
      " "*"|Depends: "*|" "*"|PreDepends: "*) alts+=("${line##*Depends: }"); continue ;;
      " "*"Depends: "*) alts+=("${line##*Depends: }") ;;
      " "*) continue ;;
      *) pkg="$line"; alts=(); continue ;;
    esac
    ok=0
    for a in "${alts[@]}"; do
      a="${a#<}"; a="${a%>}"; a="${a%%:*}"
      if in_list "$a" "${PKGS[@]}" || in_list "$a" "${PRESENT[@]}"; then ok=1; break; fi
    done
    [ "$ok" = 1 ] || missing+=("$pkg -> ${alts[*]}")
    alts=()
  done <<<"$deps"
  if [ "${#missing[@]}" -gt 0 ]; then
    printf '%s\n' "${missing[@]}"
    return 1
  fi
  return 0
}

# apt-get update when a package has no candidate (a fresh image's empty lists).
# (apt-cache policy prints "NAME:" then "  Candidate: VERSION" per package)
need_update=0
if apt-cache policy "${PKGS[@]}" 2>/dev/null | awk '/^[^ ]/ {n++} /Candidate:/ {c++; if ($2 == "(none)") bad = 1}
     END {exit !(bad || c < n || n == 0)}'; then
  need_update=1
fi
if [ "$need_update" = 1 ]; then
  echo "gpu_deps: apt-get update (a package has no download candidate)"
  apt-get update -qq >/dev/null 2>&1 || die "apt-get update failed (run it as root, with the network)"
fi

if ! unmet="$(check_depends)"; then
  die "a dependency is neither bundled nor on a CUDA image: $(echo "$unmet" | tr '\n' ';')"
fi

tmp="$(mktemp -d "${TMPDIR:-/tmp}/gpu-deps.XXXXXX")" || die "mktemp failed"
trap 'rm -rf -- "$tmp"' EXIT
mkdir -p "$tmp/debs" || die "cannot create $tmp/debs"
sandbox=()
[ "$(id -u)" = 0 ] && sandbox=(-o APT::Sandbox::User=root)
if ! (cd "$tmp/debs" && apt-get download "${sandbox[@]}" "${PKGS[@]}" >"$tmp/download.log" 2>&1); then
  die "apt-get download failed: $(grep -m1 -E '^(E|W):' "$tmp/download.log" || tail -1 "$tmp/download.log")"
fi

# The manifest: name version arch file sha256 bytes, one line per package.
man="$tmp/MANIFEST"
glibc_min="unknown"
{
  for p in "${PKGS[@]}"; do
    shopt -s nullglob
    files=("$tmp/debs/${p}_"*.deb)
    shopt -u nullglob
    [ "${#files[@]}" = 1 ] || { echo "gpu_deps: expected one .deb for $p, found ${#files[@]}" >&2; exit 1; }
    f="${files[0]}"
    name="$(dpkg-deb -f "$f" Package)" && ver="$(dpkg-deb -f "$f" Version)" &&
      a="$(dpkg-deb -f "$f" Architecture)" || { echo "gpu_deps: $(basename "$f") is not a readable .deb" >&2; exit 1; }
    [ "$name" = "$p" ] || { echo "gpu_deps: $(basename "$f") holds $name, not $p" >&2; exit 1; }
    case "$a" in amd64|all) ;; *) echo "gpu_deps: $p is $a, not amd64" >&2; exit 1 ;; esac
    sum="$(sha256sum "$f" | cut -d' ' -f1)"
    bytes="$(stat -c %s "$f")"
    printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$p" "$ver" "$a" "$(basename "$f")" "$sum" "$bytes"
  done
} >"$man.body" || exit 1

# The newest glibc symbol version any packaged ELF file asks for.
if command -v objdump >/dev/null 2>&1; then
  mkdir -p "$tmp/x"
  for f in "$tmp/debs/"*.deb; do dpkg-deb -x "$f" "$tmp/x" || die "dpkg-deb -x $(basename "$f") failed"; done
  glibc_min="$(find "$tmp/x" -type f \( -name '*.so*' -o -path '*/bin/*' \) -print0 |
    xargs -0 -r objdump -T 2>/dev/null | grep -o 'GLIBC_[0-9][0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -1)"
  [ -n "$glibc_min" ] || glibc_min="unknown"
  rm -rf "$tmp/x"
fi

# One archive, reproducible: sorted names, no owners, fixed times.
(cd "$tmp" && tar --sort=name --owner=0 --group=0 --numeric-owner --mtime='@0' -cf - debs) |
  gzip -n -9 >"$tmp/gpu-deps.tar.gz" || die "tar of the .deb files failed"
asum="$(sha256sum "$tmp/gpu-deps.tar.gz" | cut -d' ' -f1)"
abytes="$(stat -c %s "$tmp/gpu-deps.tar.gz")"
[ "$abytes" -lt "$MAX_BYTES" ] || die "the bundle is $abytes bytes, over the 40 MB limit"

dist="$(sed -n 's/^PRETTY_NAME="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' /etc/os-release 2>/dev/null)"
{
  echo "# gpu-deps manifest 1"
  echo "# made $(date -u +%Y-%m-%dT%H:%M:%SZ) by tools/gpu_deps.sh from ${dist:-unknown} ($arch) with apt-get download"
  echo "# archive gpu-deps.tar.gz sha256 $asum bytes $abytes"
  echo "# needs glibc >= $glibc_min (the newest GLIBC_ symbol version the packaged binaries use)"
  echo "# columns: package version architecture file sha256 bytes (tab-separated)"
  cat "$man.body"
} >"$man" || die "cannot write the manifest"

mkdir -p "$out" || die "cannot create $out"
# replace the two files, each through a temporary name in the same folder
if ! { cp "$tmp/gpu-deps.tar.gz" "$out/.gpu-deps.tar.gz.tmp" && mv -f "$out/.gpu-deps.tar.gz.tmp" "$out/gpu-deps.tar.gz" &&
       cp "$man" "$out/.MANIFEST.tmp" && mv -f "$out/.MANIFEST.tmp" "$out/MANIFEST"; }; then
  die "cannot write into $out"
fi

total="$(du -cb "$out/gpu-deps.tar.gz" "$out/MANIFEST" | tail -1 | cut -f1)"
echo "gpu_deps: wrote $out/gpu-deps.tar.gz and MANIFEST: ${#PKGS[@]} packages, $total bytes ($(awk -v b="$total" 'BEGIN {printf "%.1f", b / 1e6}') MB, limit 40 MB); needs glibc >= $glibc_min"
awk -F'\t' '!/^#/ {printf "  %-26s %s\n", $1, $2}' "$out/MANIFEST"
exit 0
