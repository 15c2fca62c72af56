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
# what can differ on the newest stack: the models (dilated ones too), checkpoints, export, timm drop-in, the smp and
# torchvision routes, the docs' snippets, packaging, and the transformers 5 classes (checked against transformers
# 4.40.2, which runs in the verified stack's interpreter), and the whole-model export of transformers' UperNet; not the
# OpenMMLab adapter, whose mmcv build needs torch 2.13, nor the other whole-model exports (minutes of tracing each),
# nor the export tool's command line (the package's export runs here) and the rendered tables (the same text)
CORE_TESTS := -m "not mm" -k "not onnx_export_tool_writes and not generated_tables_are_current" tests/test_models.py tests/test_checkpoint.py \
	tests/test_fusion_export.py tests/test_inputs.py tests/test_timm_compat.py tests/test_output_stride.py tests/test_routes.py tests/test_hf.py \
	tests/test_packaging.py tests/test_docs.py tests/test_checkpoint_safety.py \
	tests/test_export_model.py::test_transformers_upernet_on_the_package_backbone_exports
# the inner loop while changing the models: architecture, checkpoints, timm's API (a few minutes)
QUICK_TESTS := -m "not mm and not slow" tests/test_models.py tests/test_checkpoint.py tests/test_timm_compat.py \
	tests/test_inputs.py
# one pytest-xdist worker per core, each computing on one thread (tests/conftest.py; OMP_NUM_THREADS reaches the
# processes tests start)
JOBS ?= $(shell nproc)
PARALLEL := OMP_NUM_THREADS=1
XDIST := -n $(JOBS) --dist worksteal

.PHONY: install demo test test-verified test-latest test-quick benchmark clean

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

# torch.compile with dynamic shapes (L1 and V2-S0, inductor) on the newest torch, where inductor changes; on the
# verified one the benchmark's training test runs inductor with static shapes
test-verified: $(STAMP)
	$(PARALLEL) $(PYTHON) -m pytest -q $(XDIST) --durations=25 -k "not compile_dynamic_shapes"
	$(PARALLEL) $(PYTHON) tools/run_timm_tests.py $(XDIST)

test-latest: $(STAMP_LATEST) $(STAMP)
	$(PARALLEL) EFT_REFERENCE_PYTHON=$(abspath $(PYTHON)) $(PYTHON_LATEST) -m pytest -q $(XDIST) --durations=25 \
		$(CORE_TESTS)
	$(PARALLEL) $(PYTHON_LATEST) tools/run_timm_tests.py $(XDIST)

test-quick: $(STAMP)
	$(PARALLEL) $(PYTHON) -m pytest -q $(XDIST) $(QUICK_TESTS)

benchmark: $(STAMP)
	$(PYTHON) tools/benchmark.py

clean:
	rm -rf $(VENV) $(VENV_LATEST) demo_out work_dirs .pytest_cache
