#!/usr/bin/env bash
# Create .venv with regnas, every exporter backend that installs from PyPI ([all]) and the test tools.
# torch is installed first and pinned, so pip never resolves an unpinned torch (a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: the Fashion-MNIST files, the aarch64 cross compiler for the edge target's TVM build, and gcc
# (TVM's x86 libraries link with it; a test builds a shared library with it).
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v aarch64-linux-gnu-gcc >/dev/null || ! command -v gcc >/dev/null; }; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist gcc-aarch64-linux-gnu gcc) >/dev/null \
        || echo "setup: could not install dataset-fashion-mnist / gcc-aarch64-linux-gnu / gcc; fashion-mnist, the aarch64 TVM build and a path test will be unavailable" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
