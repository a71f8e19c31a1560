# The README's two commands are `make run` and `make test`; both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

# Stage commands call `python`: put the project's interpreter first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
# Offline machines: no analytics calls from DVC.
export DVC_NO_ANALYTICS := 1

.PHONY: help install run test test-fast metrics plots clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(INSTALLED)  ## create .venv and install the project and its test tools

run: $(INSTALLED)  ## run the pipeline (dvc repro): only what changed reruns
	$(BIN)/dvc repro

test: $(INSTALLED)  ## run the whole test suite, real dvc pipelines included
	$(BIN)/python -m pytest

test-fast: $(INSTALLED)  ## unit tests only (no dvc runs)
	$(BIN)/python -m pytest -m "not slow"

metrics: $(INSTALLED)  ## show the committed metrics and their change against HEAD
	$(BIN)/dvc metrics diff --all

plots: $(INSTALLED)  ## render dvc plots to dvc_plots/index.html
	$(BIN)/dvc plots show

# Pull-request report: the workspace against BASE, written to OUT (see README, "Pull-request reports").
BASE ?= main
OUT ?= report
REPORT_FLAGS ?=

.PHONY: report pr-report pr-comment

report: $(INSTALLED)  ## report of the workspace against BASE (default main) in OUT/report.md (default report/)
	$(BIN)/python -m pipeline.report --base '$(BASE)' --out '$(OUT)' $(REPORT_FLAGS)

# What CI runs: pull the outputs when a DVC remote is set (a failed pull just means more to
# recompute), reproduce, then report; exit 1 when a metric regressed beyond its tolerance.
pr-report: $(INSTALLED)  ## pipeline (pull or repro) then report against BASE; fails on a regression
	if $(BIN)/dvc remote default >/dev/null 2>&1; then $(BIN)/dvc pull --allow-missing || true; fi
	$(BIN)/dvc repro
	$(BIN)/python -m pipeline.report --base '$(BASE)' --out '$(OUT)' --fail-on-regression $(REPORT_FLAGS)

pr-comment: $(INSTALLED)  ## create or update the report comment on pull request PR (needs gh and GH_TOKEN)
	$(BIN)/python -m pipeline.post_comment --pr '$(PR)' '$(OUT)/comment.md'

clean:  ## remove the virtual environment and caches (not data or models)
	rm -rf $(VENV) .pytest_cache .hypothesis src/*.egg-info
