#!/usr/bin/env bash
# Installs sqflow and everything it needs into ./.venv (idempotent; safe to re-run).
# torch==2.13.0 goes first: an unpinned torch would pull a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
# pip warns once per package about find-links folders that this machine lacks; keep the rest.
quiet_pip() {
    .venv/bin/python -m pip install --quiet "$@" 2>&1 \
        | { grep -v "is ignored: it is neither a file nor a directory" || true; }
    return "${PIPESTATUS[0]}"
}
quiet_pip --upgrade pip
quiet_pip "torch==${SQFLOW_TORCH_VERSION:-2.13.0}"
quiet_pip -e ".[dev]"
echo "sqflow installed in $(pwd)/.venv"
