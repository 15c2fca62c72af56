# The two commands of the README: `make demo` and `make test`. Both set everything up first
# (.venv with the verified stack, mmcv compiled once per machine into ~/.cache/efficientformer-timm).
SHELL := /bin/bash
VENV ?= .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test benchmark clean

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml tools/setup_env.sh
	VENV=$(VENV) bash tools/setup_env.sh
	touch $@

demo: $(STAMP)
	$(PYTHON) tools/demo.py

test: $(STAMP)
	$(PYTHON) -m pytest -q

benchmark: $(STAMP)
	$(PYTHON) tools/benchmark.py

clean:
	rm -rf $(VENV) demo_out work_dirs .pytest_cache
