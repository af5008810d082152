#!/usr/bin/env bash
# Creates .venv (if missing) and installs perchead with its test tools. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# Install torch first and pinned: on machines that keep a CPU wheel of torch 2.13.0 this takes it instead of
# a multi-GB CUDA build. Elsewhere pip fetches 2.13.0 (set PERCHEAD_TORCH to choose another spec).
.venv/bin/python -m pip install -q "${PERCHEAD_TORCH:-torch==2.13.0}"
.venv/bin/python -m pip install -q -e ".[dev]"
# Compile the CPU rasterizer's numba kernels now (cached beside the module), so that the first
# `perchead reconstruct` does not spend its first fit step compiling them.
.venv/bin/python -m perchead.render.warmup
