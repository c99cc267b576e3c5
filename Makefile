# Two commands do everything on a fresh machine: `make test` and `make book`.
# Set-up (virtual environment, pinned installs, data, vendored scripts) happens inside them, once: stamp files
# in .venv/.stamps depend on the requirement files, so a second run skips straight to the work.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMPS := $(VENV)/.stamps
VENDOR := .vendor/static/vendor
NODE_MODULES := book/_vendor/node_modules
PYTEST_WORKERS ?= 2
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: test book site-test student bench runbook lint setup vendor clean
CHROMIUM := $(shell command -v chromium 2>/dev/null)

## make test: lint, unit tests (no network), the book built in the fast profile executing every notebook once (each
## cell's outcome, each exercise's student version and each glue key checked from that one run), then the tests of
## the built book and its pages in a browser
test: setup vendor
	$(BIN)/ruff check mmcourse tests book notebooks
	$(BIN)/ruff format --check notebooks
	$(call pytest,tests,-n $(PYTEST_WORKERS) -p no:cacheprovider --disable-socket --allow-unix-socket --ignore=tests/book/browser -m "not book" tests,)
	MMCOURSE_PROFILE=fast $(BIN)/python book/build.py --workers $(PYTEST_WORKERS) --threads 1
	$(call pytest,the built book,-p no:cacheprovider --disable-socket --allow-unix-socket -m book tests --ignore=tests/book/browser,MMCOURSE_REQUIRE_BOOK=1 MMCOURSE_PROFILE=fast )
	$(if $(CHROMIUM),$(MAKE) --no-print-directory site-test,@echo "Chromium is not installed: skipping the browser tests (make site-test)")

## make book: the book in _build/html, every notebook executed once in this machine's profile (MMCOURSE_PROFILE),
## several at a time where there are cores for it (BOOK_ARGS="--workers N --threads N" to choose)
book: setup vendor
	$(BIN)/python book/build.py $(BOOK_ARGS)

## make site-test: every page of _build/html in headless Chromium: loads offline, no console error, math typeset,
## images load, search works, code fits its column, a results section per chapter; screenshots in
## _build/screenshots/. Builds the book (fast profile, executed) first when there is none. Needs Debian's chromium.
site-test: setup
	@test -f _build/html/index.html || MMCOURSE_PROFILE=fast $(BIN)/python book/build.py --workers 2 --threads 1
	$(call pytest,the built site,-p no:cacheprovider tests/book/browser)

## make student: student notebooks in student/, solutions cleared, outputs removed
student: setup
	$(BIN)/python -m mmcourse.exercises notebooks student

## make bench: our pieces beside torch's and transformers' on this machine (ratios, median [min–max]) and each
## chapter's execution time (fast: run now; cpu: from the last make book); table printed, JSON in _build/bench/.
## Under 10 minutes on two cores. BENCH_ARGS passes options: make bench BENCH_ARGS=--quick
bench: setup
	$(BIN)/python -m mmcourse.book.bench $(BENCH_ARGS)

## make runbook: every chapter notebook executed one at a time in this machine's profile (MMCOURSE_PROFILE), its
## time and peak memory (GPU, else resident) printed and written to book/runbook/<machine>--<profile>.json for the
## book's Runbook page; exit code 1 if a chapter fails or, on a GPU, needs more than a Colab T4's 15 GB.
## RUNBOOK_ARGS passes options: make runbook RUNBOOK_ARGS="--chapters 01 04"
runbook: setup
	$(BIN)/python -m mmcourse.book.runbook $(RUNBOOK_ARGS)

lint: setup
	$(BIN)/ruff check mmcourse tests notebooks book
	$(BIN)/ruff format --check mmcourse tests book notebooks

# make test executes two notebooks at a time with one torch thread each: two kernels of two threads each on two
# cores ran the fast profile 5× slower (307 s vs 63 s).
# pytest exits 5 when it collected nothing: that must fail loudly, never pass as green.
# $(1): what is tested, $(2): pytest arguments, $(3): prefix (environment, path to .venv).
define pytest
$(3)$(BIN)/python -m pytest $(2); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "ERROR: pytest collected no tests from $(1) (exit code 5): nothing was tested."; fi; \
	exit $$rc
endef

# The data check runs every time (it takes a second): a deleted cache is fetched again, not reported missing.
setup: $(STAMPS)/package
	@$(BIN)/python -m mmcourse.data install --quiet

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMPS)/torch: requirements-torch.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-torch.txt
	mkdir -p $(STAMPS) && touch $@

$(STAMPS)/requirements: requirements.txt $(STAMPS)/torch
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(STAMPS)/package: pyproject.toml $(STAMPS)/requirements
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $@

# MathJax, require.js and the ipywidgets HTML manager, pinned with integrity hashes in package-lock.json,
# copied into the book's static files so that the built site loads nothing from outside itself.
vendor: $(VENDOR)/.stamp

$(VENDOR)/.stamp: book/_vendor/package-lock.json
	cd book/_vendor && npm ci --no-audit --no-fund --ignore-scripts --loglevel=error
	rm -rf $(VENDOR) && mkdir -p $(VENDOR)/html-manager
	cp -r $(NODE_MODULES)/mathjax/es5 $(VENDOR)/mathjax
	cp $(NODE_MODULES)/requirejs/require.js $(VENDOR)/require.js
	cp $(NODE_MODULES)/@jupyter-widgets/html-manager/dist/embed-amd.js $(VENDOR)/html-manager/
	cp $(NODE_MODULES)/@jupyter-widgets/html-manager/dist/*.{woff2,woff,ttf,eot,svg} $(VENDOR)/html-manager/
	touch $@

clean:
	rm -rf _build student .vendor $(NODE_MODULES)
