# The two commands of the README: `make demo` and `make test`. Both set everything up first: .venv with the
# verified stack (mmcv compiled once per machine into ~/.cache/efficientformer-timm), and for the tests also
# .venv-latest with the newest torch, torchvision and timm from the registry.
SHELL := /bin/bash
VENV ?= .venv
VENV_LATEST ?= .venv-latest
PYTHON := $(VENV)/bin/python
PYTHON_LATEST := $(VENV_LATEST)/bin/python
STAMP := $(VENV)/.installed
STAMP_LATEST := $(VENV_LATEST)/.installed
# the tests that need no OpenMMLab stack: models, checkpoints, export, timm drop-in, and the transformers 5 classes
# (checked against transformers 4.40.2, which runs in the verified stack's interpreter)
CORE_TESTS := -m "not mm" tests/test_models.py tests/test_checkpoint.py tests/test_fusion_export.py \
	tests/test_inputs.py tests/test_timm_compat.py tests/test_hf.py tests/test_packaging.py

.PHONY: install demo test test-verified test-latest benchmark clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/setup_env.sh tools/constraints.txt
	VENV=$(VENV) STACK=verified bash tools/setup_env.sh
	touch $@

$(STAMP_LATEST): setup.cfg pyproject.toml tools/setup_env.sh
	VENV=$(VENV_LATEST) STACK=latest bash tools/setup_env.sh
	touch $@

demo: $(STAMP)
	$(PYTHON) tools/demo.py

test: test-verified test-latest

test-verified: $(STAMP)
	$(PYTHON) -m pytest -q
	$(PYTHON) tools/run_timm_tests.py

test-latest: $(STAMP_LATEST) $(STAMP)
	EFT_REFERENCE_PYTHON=$(abspath $(PYTHON)) $(PYTHON_LATEST) -m pytest -q $(CORE_TESTS)
	$(PYTHON_LATEST) tools/run_timm_tests.py

benchmark: $(STAMP)
	$(PYTHON) tools/benchmark.py

clean:
	rm -rf $(VENV) $(VENV_LATEST) demo_out work_dirs .pytest_cache
