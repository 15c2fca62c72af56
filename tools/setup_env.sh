#!/usr/bin/env bash
# Builds a virtual environment for `make demo` / `make test`.
#   STACK=verified (default): the verified stack of tools/constraints.txt, with the OpenMMLab adapter and
#     transformers 4.40.2 (the reference of the transformers tests); mmcv 2.1.0 is compiled once per machine into
#     a wheel cache that outlives the clone.
#   STACK=latest: the newest torch, torchvision and timm from the registry, then this package with the export,
#     test and hf (transformers 5) extras, which must leave that torch as it is.
# Both fetch the source distribution of their timm version (its tests/ folder) for tools/run_timm_tests.py.
set -euo pipefail
VENV=${VENV:-.venv}
STACK=${STACK:-verified}
PYTHON=${PYTHON:-python3.11}
CACHE=${EFT_CACHE:-$HOME/.cache/efficientformer-timm}
WHEELHOUSE=${EFT_WHEELHOUSE:-$CACHE/wheels}
CONSTRAINTS=tools/constraints.txt

# The machine's local CPU-only torch wheel breaks the registry's torchvision: look elsewhere.
EMPTY_LINKS=$(mktemp -d)
export PIP_FIND_LINKS=$EMPTY_LINKS
trap 'rm -rf "$EMPTY_LINKS"' EXIT

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip "$@"; }
torch_version() { "$VENV/bin/python" -c 'import torch; print(torch.__version__)'; }

# mmengine, openmim and mmcv's setup.py import pkg_resources (gone in setuptools 82)
pip install -q "setuptools>=77.0.3,<82" wheel

case "$STACK" in
verified)
    pip install -q -c "$CONSTRAINTS" ninja psutil torch torchvision
    if ! ls "$WHEELHOUSE"/mmcv-2.1.0-*.whl >/dev/null 2>&1; then
        echo "Building mmcv 2.1.0 with ops (once per machine, 12-20 minutes on 2 cores) into $WHEELHOUSE"
        mkdir -p "$WHEELHOUSE"
        MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip wheel --no-build-isolation --no-deps mmcv==2.1.0 -w "$WHEELHOUSE"
    fi
    pip install -q -c "$CONSTRAINTS" --find-links "$WHEELHOUSE" mmcv
    # openmim's own pins downgrade setuptools: install it without them.
    pip install -q --no-deps openmim==0.3.9
    pip install -q click colorama model-index pandas requests rich tabulate
    pip install -q -c "$CONSTRAINTS" -e ".[mm,mmpretrain,test,reference]"
    ;;
latest)
    pip install -q --upgrade torch torchvision timm
    before=$(torch_version)
    pip install -q -e ".[test,hf]"
    after=$(torch_version)
    if [ "$before" != "$after" ]; then
        echo "installing efficientformer-timm changed torch $before -> $after" >&2
        exit 1
    fi
    ;;
*)
    echo "STACK must be 'verified' or 'latest', got '$STACK'" >&2
    exit 2
    ;;
esac

# timm's own tests ship in its source distribution, not in the wheel
timm_version=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("timm"))')
if [ ! -d "$CACHE/timm-src/timm-$timm_version/tests" ]; then
    mkdir -p "$CACHE/timm-src"
    pip download -q --no-deps --no-binary :all: "timm==$timm_version" -d "$CACHE/timm-src"
    tar -xzf "$CACHE/timm-src/timm-$timm_version.tar.gz" -C "$CACHE/timm-src"
fi
echo "$STACK stack in $VENV: torch $(torch_version), timm $timm_version"
