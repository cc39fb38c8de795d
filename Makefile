# Everything bootstraps its own virtual environment: a fresh machine needs only
# python3 (3.10+) and make.  `make run` and `make test` are all a user types.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
# What is installed, one stamp each: the default path (selfie engine, no torch),
# the SAM 2 extra on top, and everything the tests need (SAM 2's included).
BASE := $(VENV)/.installed-base
SAM2 := $(VENV)/.installed-sam2
STAMP := $(VENV)/.installed
# torch first, pinned, so pip does not pull a different build in through sam2.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# SAM 2's optional CUDA extension only fills holes in masks; skip the build by default.
export SAM2_BUILD_CUDA ?= 0

.PHONY: setup sam2 run test bench browser models cluster clean

setup: $(BASE)

# pip without -q: a first install takes a while and should say what it is doing.
$(BASE): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install --progress-bar on -e .
	touch $(BASE)

# The SAM 2 engine: torch and sam2 (`live` names this target when they are missing).
sam2: $(SAM2)

$(SAM2): $(BASE)
	$(PY) -m pip install --progress-bar on $(TORCH_SPEC)
	$(PY) -m pip install --progress-bar on -e '.[sam2]'
	touch $(SAM2)

$(STAMP): $(SAM2)
	$(PY) -m pip install --progress-bar on -e '.[test,sam2]'
	touch $(STAMP)

models: setup
	$(VENV)/bin/live fetch selfie

# The main job: the WebRTC page + control panel (works with no driver and no
# webcam attached to this machine: the browser's camera is the source).
run: models
	$(VENV)/bin/live serve

# Headless Chromium for the browser tests and Xvfb for the preview-window tests
# (Debian/Ubuntu as root; elsewhere those tests skip and say why).
browser:
	@{ command -v chromium && command -v Xvfb; } >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -q && apt-get install -y -q chromium xvfb) >/dev/null; \
	  else echo "chromium/Xvfb not found: browser and preview tests will be skipped"; fi; }

# Ray (the cluster extra) for the tests that start a local Ray head.
cluster: setup
	@$(PY) -c 'import ray' 2>/dev/null || $(PY) -m pip install -q -e '.[cluster]'

test: $(STAMP) models browser cluster
	$(PY) -m pytest -q -ra

# Each benchmark prints one JSON object as its last line (README: Benchmarks, Scaling).
bench: $(STAMP) models browser cluster
	$(PY) -m bench.pipeline
	$(PY) -m bench.quality
	$(PY) -m bench.webrtc
	$(PY) -m bench.browser
	$(PY) -m bench.overload
	$(PY) -m bench.capacity
	$(PY) -m bench.media_path
	$(PY) -m bench.stream
	$(PY) -m bench.stream --sessions 4
	$(PY) -m bench.stream --serve 4
	$(PY) -m bench.serve_affinity

clean:
	rm -rf $(VENV) bench/out .pytest_cache
