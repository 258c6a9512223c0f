#!/usr/bin/env bash
# Builds the demo model's training corpus into .demo-corpus/ (git-ignored): installs freely
# licensed English documentation from Debian main (licences: docs/DEMO_MODEL.md), then extracts
# plain text, chat samples and the 2% held-out text with tools/demo/extract_corpus.py.
# Usage: tools/demo/build_corpus.sh [OUT_DIR]   (needs root for apt-get)
set -euo pipefail
cd "$(dirname "$0")/../.."
out="${1:-.demo-corpus}"
packages=(fortunes fortunes-min fortunes-bofh-excuses fortunes-debian-hints debian-faq
          debian-reference-en jargon-text doc-debian debian-policy python3.11-doc)
missing=()
for p in "${packages[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
for p in "${packages[@]}"; do
  printf '%s %s\n' "$p" "$(dpkg-query -W -f='${Version}' "$p")"
done > /tmp/demo-corpus-packages.txt
python3 tools/demo/extract_corpus.py "$out"
cp /tmp/demo-corpus-packages.txt "$out/packages.txt"
du -sh "$out"
