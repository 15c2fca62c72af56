#!/usr/bin/env bash
# Builds .venv with the verified stack (see shared/STACK.md): torch 2.13 + torchvision 0.28 from the
# registry, mmcv 2.1.0 compiled once into a wheel cache that outlives the clone, then this package.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
WHEELHOUSE=${EFT_WHEELHOUSE:-$HOME/.cache/efficientformer-timm/wheels}

# The machine's local CPU-only torch wheel breaks the registry's torchvision: look elsewhere.
EMPTY_LINKS=$(mktemp -d)
export PIP_FIND_LINKS=$EMPTY_LINKS
trap 'rm -rf "$EMPTY_LINKS"' EXIT

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }

pip install -q "setuptools>=77.0.3,<82" wheel ninja psutil
pip install -q torch==2.13.0 torchvision==0.28.0

if ! ls "$WHEELHOUSE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
    echo "Building mmcv 2.1.0 with ops (once per machine, 12-20 minutes on 2 cores) into $WHEELHOUSE"
    mkdir -p "$WHEELHOUSE"
    MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip wheel --no-build-isolation --no-deps mmcv==2.1.0 -w "$WHEELHOUSE"
fi
pip install -q --find-links "$WHEELHOUSE" mmcv==2.1.0

# openmim's own pins downgrade setuptools: install it without them.
pip install -q --no-deps openmim==0.3.9
pip install -q click colorama model-index pandas requests rich tabulate

pip install -q -e ".[test]"
