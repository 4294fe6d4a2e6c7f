# PixelLM: install, test, demo, benchmarks and the GPU check. Every target runs from a fresh clone.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Reinstalls only when a requirements file is newer than the last successful install.
STAMP := $(VENV)/.install-stamp

.PHONY: install test demo bench gpu-check

install: $(STAMP)

# One pip call for all pins: torch==2.13.0 is resolved together with deepspeed & co,
# so pip never picks another torch build on its own.
$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements-dev.txt
	touch $@

test: install
	HF_HUB_OFFLINE=1 DS_ACCELERATOR=cpu $(PY) -m pytest -q tests

demo: install
	$(PY) -m demo

bench: install
	@failed=""; \
	for script in bench/*.py; do \
		echo "== $$script"; \
		PYTHONPATH="$(CURDIR)" HF_HUB_OFFLINE=1 $(PY) "$$script" || failed="$$failed $$script"; \
	done; \
	if [ -n "$$failed" ]; then echo "failed:$$failed" >&2; exit 1; fi

# The real-size check on a CUDA GPU (sections budgeted to 6 minutes); without CUDA its tiny form on the CPU.
# docs/gpu_check.md: what it measures, and how to run it on a GPU machine that cannot install packages.
# `make bench` runs it too (bench/gpu_check.py picks the form by the device).
gpu-check: install
	PYTHONPATH="$(CURDIR)" HF_HUB_OFFLINE=1 $(PY) bench/gpu_check.py $(GPU_CHECK_FLAGS)
