# Two commands set up a fresh machine: `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VENV310 := .venv310
EXTRAS ?= ros,train,dev
# pip's notes about this machine's unused local indexes are noise
PIPFILTER := { grep -v 'is ignored: it is neither a file nor a directory' || true; }
export OMP_NUM_THREADS ?= 2
export RMW_IMPLEMENTATION ?= rmw_fastrtps_cpp

.PHONY: setup test demo lint format bench clean sample venv310

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

test: $(STAMP) $(VENV310)/.installed
	$(PY) -m pytest tests -q -ra

demo: $(STAMP)
	$(PY) -m dinov3_ros.demo $(if $(LIVE),--live,)

# Python 3.10 (JetPack 6 / ROS 2 Humble) with the dependencies, for the import check of
# tests/test_python310.py. constraints.txt pins releases that need 3.11+, so 3.10 gets the newest ones
# that support it; open3d is left out (imported only where used).
PY310 ?= $(firstword $(wildcard $(HOME)/.pyenv/versions/3.10*/bin/python3.10) $(shell command -v python3.10))
DEPS310 := numpy pyyaml opencv-python-headless scipy safetensors onnx onnxruntime rosbags scikit-image tqdm \
	tensorboard ros-rclpy ros-sensor-msgs ros-std-msgs ros-geometry-msgs ros-diagnostic-msgs \
	ros-visualization-msgs ros-nav-msgs ros-lifecycle-msgs ros-rmw-fastrtps-cpp
venv310: $(VENV310)/.installed

$(VENV310)/.installed: setup.py
	@[ -n "$(PY310)" ] || { echo "no Python 3.10: pyenv install 3.10, or make PY310=/path/to/python3.10"; exit 1; }
	@[ -x $(VENV310)/bin/python ] || $(PY310) -m venv $(VENV310)
	@# the local CPU wheel is built for 3.11 only: PyPI's build of the same release (it runs on a CPU)
	$(VENV310)/bin/python -m pip install -q --disable-pip-version-check 'torch==2.13.0' 2>&1 | $(PIPFILTER)
	$(VENV310)/bin/python -m pip install -q $(DEPS310) 2>&1 | $(PIPFILTER)
	@touch $@

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

sample: $(STAMP)
	$(PY) -m dinov3_ros.synthetic.sample

clean:
	rm -rf $(VENV) $(VENV310) build install log .pytest_cache
