# Two commands set up a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXTRAS ?= ros,train,dev
# pip's notes about this machine's unused local indexes are noise
PIPFILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
export OMP_NUM_THREADS ?= 2
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: setup test demo lint format bench clean sample

setup: $(STAMP)

# Reinstalls only when the dependency declarations change.
$(STAMP): setup.py setup.cfg constraints.txt package.xml
	@if [ "$$(id -u)" = "0" ] && ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then \
		echo "installing libusb-1.0-0 (needed by open3d)"; \
		apt-get install -y -qq libusb-1.0-0 >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; }; \
	fi
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt 'torch==2.13.0' 2>&1 | $(PIPFILTER)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[$(EXTRAS)]' 2>&1 | $(PIPFILTER)
	@# timm pulls PyPI's CUDA torchvision, which cannot load beside the CPU torch: drop it.
	@$(PY) -c 'import torchvision' >/dev/null 2>&1 || $(PY) -m pip uninstall -y -q torchvision >/dev/null 2>&1 || true
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest tests -q -ra

demo: $(STAMP)
	$(PY) -m dinov3_ros.demo $(if $(LIVE),--live,)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

sample: $(STAMP)
	$(PY) -m dinov3_ros.synthetic.sample

clean:
	rm -rf $(VENV) build install log .pytest_cache
