#!/usr/bin/env bash
# Create .venv with regnas, every exporter backend that installs from PyPI ([all]) and the test tools.
# torch is installed first and pinned, so pip never resolves an unpinned torch (a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages: the Fashion-MNIST files, and the aarch64 cross compiler for the edge target's TVM build.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null \
    && { [ ! -d /usr/share/datasets/fashion-mnist ] || ! command -v aarch64-linux-gnu-gcc >/dev/null; }; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist gcc-aarch64-linux-gnu) >/dev/null \
        || echo "setup: could not install dataset-fashion-mnist / gcc-aarch64-linux-gnu; fashion-mnist and the aarch64 TVM build will be unavailable" >&2
fi
python3 -m venv .venv
.venv/bin/pip install -q --upgrade pip
.venv/bin/pip install -q "torch==2.13.0"
.venv/bin/pip install -q -e ".[dev]"
