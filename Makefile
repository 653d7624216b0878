# speechlm: `make demo` runs the whole tiny pipeline, `make test` runs every check.
# Both create .venv on first use (a minute or two) and reuse it after.

PYTHON ?= python3
TORCH_VERSION ?= 2.13.0
MOSHI_VERSION ?= 0.2.13
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.speechlm-installed
PIP := $(BIN)/python -m pip -q --disable-pip-version-check

.PHONY: setup demo test test-browser lint lab clean-data help
.DEFAULT_GOAL := help

help:
	@echo "make demo   set up .venv and run all notebooks on the tiny profile (CPU, offline)"
	@echo "make test   set up .venv, then ruff, the unit tests and every notebook (nbmake)"
	@echo "make test-browser   only the JupyterLab + Chromium widget tests"
	@echo "make lab    open JupyterLab on notebooks/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip

# torch first, pinned, so later requirements never pull a different (multi-GB) build.
# moshi pins torch<2.10 and huggingface-hub<1.0, which clash with current torch and
# transformers: it is installed without its pins (its real imports are our dependencies).
$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(PIP) install torch==$(TORCH_VERSION)
	$(PIP) install -e '.[dev]'
	$(PIP) install --no-deps moshi==$(MOSHI_VERSION)
	-$(BIN)/nbstripout --install --attributes .git/info/attributes 2>/dev/null
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	SPEECHLM_PROFILE=tiny $(BIN)/python -m speechlm_utils prepare
	SPEECHLM_PROFILE=tiny $(BIN)/python -m speechlm_utils notebooks --dir notebooks --out data/executed

lint: setup
	$(BIN)/ruff check speechlm_utils tests benchmarks data/demo

# Browser tests (tests/browser) run when Chromium is installed and are reported as skipped,
# with the reason, when it is not (-rs prints skip reasons). ffmpeg versions cut and label
# chunks differently (see scrape.place_chunks): when the system has an ffmpeg, which the first
# run uses, the ffmpeg-sensitive tests run again with the one bundled in imageio-ffmpeg.
FFMPEG_TESTS := tests/test_audio.py tests/test_scrape.py \
	tests/test_captions.py::test_scrape_stores_the_sidecar_split_at_real_chunk_starts

# Two pytest workers (pytest-xdist, `--dist loadgroup`): the notebooks and the tests marked
# `pipeline` share data/tiny, so tests/conftest.py groups them in order on one worker while the
# other takes the independent tests. OMP_WAIT_POLICY=PASSIVE: two 2-thread torch processes on two
# cores ran a test 2.8x slower with OpenMP's spinning threads. The browser tests run afterwards,
# alone: they reuse the notebooks' data, and JupyterLab's kernels start slowly under load.
PYTEST := SPEECHLM_PROFILE=tiny $(BIN)/python -m pytest -q -rs
test: lint
	OMP_WAIT_POLICY=PASSIVE $(PYTEST) -n 2 --dist loadgroup --durations=15 --nbmake \
	  --nbmake-timeout=1800 --ignore=tests/browser tests $(wildcard notebooks/*.ipynb)
	$(PYTEST) --durations=5 tests/browser
	@if command -v ffmpeg >/dev/null 2>&1; then \
	  echo "again with the bundled ffmpeg: $(FFMPEG_TESTS)"; \
	  SPEECHLM_FFMPEG=bundled $(PYTEST) $(FFMPEG_TESTS); \
	fi

test-browser: setup
	$(PYTEST) tests/browser

lab: setup
	SPEECHLM_PROFILE=$${SPEECHLM_PROFILE:-tiny} $(BIN)/jupyter lab notebooks

clean-data:
	@echo "removes generated data (keeps data/searches.txt and data/demo/)"
	cd data && git clean -fdX .
