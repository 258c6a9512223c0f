#!/usr/bin/env bash
# Runs HERE (a Debian machine with apt): downloads the Debian packages that the GPU machine lacks
# into .devdeps/ (git-ignored; about 8 MB), for tools/gpu-check.sh to unpack there with
# `dpkg -x` into a private prefix. The GPU machine is an Ubuntu 24.04 image with nvcc, cmake,
# ninja and python3+torch but no internet and no apt, and none of our build dependencies.
# Bookworm's libraries run on Ubuntu 24.04 (older glibc and libstdc++ than the target's).
# Idempotent: packages already downloaded are kept. Pass the device call `carry: [".devdeps"]`.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  # headers + CMake configs / pkg-config files
  nlohmann-json3-dev libcli11-dev libcpp-httplib-dev libpcre2-dev libgtest-dev libgmock-dev libbenchmark-dev
  # headers that httplib.h includes (Debian builds it with OpenSSL, zlib and Brotli support; the
  # defines in its .pc change struct layouts, so they must stay and these headers must exist)
  libssl-dev zlib1g-dev libbrotli-dev
  # runtime libraries the -dev packages link against (used on the device only where it lacks them)
  libcpp-httplib0.11 libpcre2-8-0 libbenchmark1debian libbrotli1 libssl3 zlib1g
  # pkg-config, in case the image has none (CMakeLists.txt needs it for PCRE2 and cpp-httplib)
  pkgconf pkgconf-bin libpkgconf3
)

mkdir -p .devdeps
cd .devdeps
missing=()
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || missing+=("$p")
done
if ((${#missing[@]})); then
  apt-get download "${missing[@]}" 2>&1 | grep -v '^W: Download is performed unsandboxed' || true
fi
for p in "${packages[@]}"; do
  compgen -G "${p}_*.deb" >/dev/null || { echo "device-deps: $p did not download (run apt-get update?)" >&2; exit 1; }
done
# Epochs come as '%3a' in file names ("zlib1g_1%3a1.2.13..."): keep names plain.
for f in *%3a*; do [ -e "$f" ] && mv "$f" "${f//%3a/-}"; done
# One version of each package: drop older downloads left by an earlier run.
for p in "${packages[@]}"; do
  mapfile -t versions < <(ls -1 "${p}"_*.deb | sort -V)
  ((${#versions[@]} > 1)) && rm -f "${versions[@]:0:${#versions[@]}-1}"
done
echo "device-deps: $(ls -1 *.deb | wc -l) packages, $(du -sh . | cut -f1) in .devdeps/"
