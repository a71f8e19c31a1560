# The README's two commands are `make run` and `make test`; both create .venv when missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
REMOTE_PLUGINS := $(VENV)/.remote-plugins
# The page `dvc plots` fills (.dvc/config plots.html_template): Vega inlined from the installed
# vl-convert-python, so plot pages draw with no network. Generated, ignored by git (0.9 MB).
PLOTS_TEMPLATE := .dvc/offline-plots.html
# The environment every target needs: the venv and that page. Without the page every `dvc plots` command
# fails ("HTML template has to contain '{plot_divs}'"), so it is made wherever the venv is.
# and the DVC plugin the default remote needs (REMOTE_PLUGINS).
ENV := $(INSTALLED) $(PLOTS_TEMPLATE) $(REMOTE_PLUGINS)

# Stage commands call `python`: put the project's interpreter first on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
# Offline machines: no analytics calls from DVC.
export DVC_NO_ANALYTICS := 1

.PHONY: help install run server-stop test test-anycpu test-fast metrics plots clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

# .venv is made from PYTHON: Python 3.11 or newer (pyproject.toml's requires-python), checked first so
# an older one stops here with one line, not deep in pip. tests/unit/test_installability.py resolves 3.11-3.13.
SUPPORTED_PYTHONS := Python 3.11 or newer (tested: 3.11, 3.12, 3.13); rerun with PYTHON=python3.12, say

# The DVC plugin the default remote needs (pyproject.toml's extras: dvc-s3, dvc-ssh, dvc-gs, dvc-azure), from its
# URL's scheme, unless it is installed already; a folder needs none. Asked of DVC itself, so .dvc/config.local and
# a remote named anything count.
REMOTE_PLUGIN = url=$$($(BIN)/dvc config "remote.$$($(BIN)/dvc remote default 2>/dev/null).url" 2>/dev/null); \
	case "$$url" in s3://*) extra=s3;; ssh://*) extra=ssh;; gs://*) extra=gs;; azure://*) extra=azure;; *) extra=;; esac; \
	if [ -n "$$extra" ] && ! $(BIN)/python -c "import dvc_$$extra" 2>/dev/null; then \
	  echo "make: the DVC remote $$url needs dvc-$$extra: installing .[$$extra]"; $(BIN)/python -m pip install --quiet -e ".[$$extra]"; fi

$(INSTALLED): pyproject.toml
	@if ! test -x $(BIN)/python; then \
	  found=$$($(PYTHON) -c 'import sys; print("%d.%d.%d %s" % (sys.version_info[:3] + (sys.executable,))); sys.exit(sys.version_info[:2] < (3, 11))' 2>/dev/null); status=$$?; \
	  version=$${found%% *}; executable=$${found#* }; \
	  if [ -z "$$found" ]; then echo "make: PYTHON=$(PYTHON) does not run; classifier-pipeline needs $(SUPPORTED_PYTHONS)" >&2; exit 1; fi; \
	  if [ $$status -ne 0 ]; then echo "make: PYTHON=$(PYTHON) is Python $$version ($$executable); classifier-pipeline needs $(SUPPORTED_PYTHONS)" >&2; exit 1; fi; \
	  echo "make: creating $(VENV) with Python $$version ($$executable, from PYTHON=$(PYTHON))"; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# A remote set or pulled in later installs its plugin on the next make, and nothing else: only this stamp
# depends on .dvc/config, so `make remote` or `dvc remote add` never reruns the project's install.
$(REMOTE_PLUGINS): $(INSTALLED) $(wildcard .dvc/config .dvc/config.local)
	@$(REMOTE_PLUGIN)
	@touch $@

$(PLOTS_TEMPLATE): $(INSTALLED) src/classifier/plots_template.py
	$(BIN)/python -m classifier.plots_template $@

install: $(ENV)  ## create .venv and install the project and its test tools

# Prefect: its settings, and the SQLite database of `make run`'s server and of `make server` without a
# DATABASE_URL, live in the project's .prefect/ (ignored by git and DVC); a team's `make server
# DATABASE_URL=postgresql+asyncpg://...` keeps its runs in PostgreSQL instead (docs/scaling-out.md).
# No telemetry, which only fails and slows the server down offline.
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export DO_NOT_TRACK ?= 1
# DEVICE=auto|cpu|cuda|mps sets params.yaml's train.device first; empty leaves params.yaml alone.
DEVICE ?=
DEVICE_FLAG = $(if $(DEVICE),--device '$(DEVICE)')

# One server (pipeline/server/local.py): make run and make retrain use make server's address when it answers, else
# start the project's own background server there (the same port, 4200 by default) when it is free.
run retrain: export CLASSIFIER_SERVER_URL ?= $(SERVER_URL)

run: $(ENV)  ## run the pipeline (dvc repro) as a Prefect flow; starts the project's Prefect server on first use
	$(BIN)/python -m pipeline run $(DEVICE_FLAG)

server-stop: $(ENV)  ## stop the project's background Prefect server that `make run` started
	$(BIN)/python -m pipeline server-stop

# Four workers on two cores: most of the slow tests wait on servers, workers and heartbeats, not on the CPU.
# How the tests are spread over the workers: tests/conftest.py (pytest_xdist_make_scheduler).
TEST_WORKERS ?= 4

test: $(ENV)  ## run the whole test suite, real dvc pipelines included (TEST_WORKERS=4 pytest-xdist workers)
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

# The tests that train models and then judge them, rerun with the kernels of another CPU (tests/anycpu.py):
# other model bytes, as a machine with another CPU trains, so a test that asserts which verdict case its
# retrain lands in fails here rather than on the next machine. CI runs it after `make test`.
ANYCPU_TESTS ?= tests/pipeline/test_report.py tests/pipeline/test_retrain.py tests/pipeline/test_retrain_pull_request.py \
  tests/pipeline/test_fresh_clone.py tests/pipeline/test_loop_chain.py
ANYCPU_WORKERS ?= 2

test-anycpu: $(ENV)  ## rerun the tests that judge trained models with another CPU's kernels (other bytes); CI runs it
	$(BIN)/python -m tests.anycpu -n $(ANYCPU_WORKERS) -m slow $(ANYCPU_TESTS)

test-fast: $(ENV)  ## unit tests only (no dvc runs)
	$(BIN)/python -m pytest -m "not slow"

metrics: $(ENV)  ## show the committed metrics and their change against HEAD
	$(BIN)/dvc metrics diff --all

plots: $(ENV)  ## render dvc plots to dvc_plots/index.html
	$(BIN)/dvc plots show

# Pull-request report: the workspace against BASE, written to OUT (see docs/reports.md).
BASE ?= main
OUT ?= report
REPORT_FLAGS ?=
# SEEDS=K: also the recipe verdict, K training seeds of the base's params and K of the head's (docs/reports.md).
SEEDS ?=
SEEDS_FLAG = $(if $(strip $(SEEDS)),--seeds '$(SEEDS)')

.PHONY: report pr-report pr-model pr-comment

report: $(ENV)  ## report of the workspace against BASE (default main) in OUT/report.md (default report/)
	$(BIN)/python -m pipeline.report --base '$(BASE)' --out '$(OUT)' $(SEEDS_FLAG) $(REPORT_FLAGS)

# What CI runs (docs/reports.md, "In CI"): from a worktree of BASE (its code and policy), fetch the model the head's
# dvc.lock records from the DVC cache or BASE's remote (or train it with the head's code), score it with BASE's evaluate
# on BASE's test images, and judge that; exit 1 when the head may be worse by as much as matters, 2 when nothing could
# be judged. make itself exits 2 for either: the report's own status is in $(OUT)/exit-status.
pr-report: $(ENV)  ## judge CI's own scoring of the head's model against BASE, with BASE's code; fails on a regression
	$(BIN)/python -m pipeline.report --base '$(BASE)' --out '$(OUT)' --check-head --fail-on-regression $(SEEDS_FLAG) $(REPORT_FLAGS)

# The untrusted CI job's half (a fork's pull request): the head's code trains its model, which the trusted job scores.
MODEL_OUT ?= pr-model
pr-model: $(ENV)  ## train the head with its own code (dvc repro); its model, card and data manifest go to MODEL_OUT (default pr-model/)
	PATH="$(abspath $(BIN)):$$PATH" $(BIN)/dvc repro
	mkdir -p '$(MODEL_OUT)' && cp models/model.pth models/model.json data/prepared/manifest.csv '$(MODEL_OUT)/'

pr-comment:  ## post OUT/comment.md on pull request PR, editing your last comment there (needs gh; CI uses a sticky-comment action)
	gh pr comment '$(PR)' --edit-last --create-if-none --body-file '$(OUT)/comment.md'

# Scaling out (docs/scaling-out.md): one server, a worker per machine and pool, deployments.
PREFECT_HOST ?= 127.0.0.1
PREFECT_PORT ?= 4200
# The address people browse to: the UI asks the API at $(SERVER_URL)/api, and the links the server and the
# clients print start with it. Give it wherever that is not PREFECT_HOST (0.0.0.0, a proxy): docs/scaling-out.md.
SERVER_URL ?= http://$(if $(findstring :,$(PREFECT_HOST)),[$(PREFECT_HOST)],$(PREFECT_HOST)):$(PREFECT_PORT)
POOL ?= cpu

# The server's auth string (docs/scaling-out.md, "Authentication"): PREFECT_SERVER_API_AUTH_STRING on the server and
# PREFECT_API_AUTH_STRING on every client, each read from the environment or else from this file,
# which git ignores (/.prefect/). It travels in the environment only, never on a command line.
PREFECT_AUTH_FILE ?= $(CURDIR)/.prefect/auth
ifeq ($(origin PREFECT_API_AUTH_STRING),undefined)
PREFECT_AUTH_FROM_FILE := $(strip $(shell cat '$(PREFECT_AUTH_FILE)' 2>/dev/null))
ifneq ($(PREFECT_AUTH_FROM_FILE),)
run retrain worker deploy data-updated sweep: export PREFECT_API_AUTH_STRING := $(PREFECT_AUTH_FROM_FILE)
endif
endif
NO_AUTH_STRING = refusing to serve on $(PREFECT_HOST) without an auth string: run 'make auth-string' (writes $(PREFECT_AUTH_FILE)) or export PREFECT_SERVER_API_AUTH_STRING
NO_SERVER_URL = SERVER_URL=$(SERVER_URL) is no address a browser can open (0.0.0.0 and :: mean every interface): give the one users browse to, e.g. make server PREFECT_HOST=$(PREFECT_HOST) SERVER_URL=http://$$(hostname):$(PREFECT_PORT)

.PHONY: server worker deploy retrain auth-string

auth-string:  ## write a new random auth string to PREFECT_AUTH_FILE (mode 600); restart the server and workers to use it
	@mkdir -p '$(dir $(PREFECT_AUTH_FILE))' && umask 077 && $(PYTHON) -c 'import secrets; print(secrets.token_urlsafe(32))' > '$(PREFECT_AUTH_FILE).new' && mv '$(PREFECT_AUTH_FILE).new' '$(PREFECT_AUTH_FILE)'
	@echo "make auth-string: wrote a new auth string to $(PREFECT_AUTH_FILE); copy it to each worker's checkout, then restart the server and the workers"

# The server's database (docs/scaling-out.md, "The server's database"): SQLite in PREFECT_HOME unless DATABASE_URL
# (command line or environment) names a PostgreSQL, postgresql+asyncpg://USER@HOST:PORT/DB; its password best comes
# from PGPASSWORD or ~/.pgpass, not the URL. Only the server is given it (PREFECT_API_DATABASE_CONNECTION_URL); before it
# starts, python -m pipeline.server.database checks it (one line: unreachable, credentials refused, no pg_trgm) and
# brings it to Prefect's schema (prefect server database upgrade -y), so the server need not migrate again.
DATABASE_URL ?=
ifneq ($(DATABASE_URL),)
server: export PREFECT_API_DATABASE_CONNECTION_URL := $(DATABASE_URL)
endif

# Beyond loopback the server answers only clients that hold its auth string; on loopback one is optional.
# Prefect builds the UI's API address from its settings, not from --port (4200 unless told): it is told SERVER_URL.
server: $(ENV)  ## start a Prefect server on PREFECT_HOST:PREFECT_PORT (default 127.0.0.1:4200), its UI at SERVER_URL; beyond loopback, with authentication
	@secret="$${PREFECT_SERVER_API_AUTH_STRING:-$$(cat '$(PREFECT_AUTH_FILE)' 2>/dev/null)}"; \
	case '$(PREFECT_HOST)' in 127.*|localhost|::1) ;; *) if [ -z "$$secret" ]; then echo "make server: $(NO_AUTH_STRING)" >&2; exit 2; fi;; esac; \
	case '$(SERVER_URL)' in *://0.0.0.0|*://0.0.0.0[:/]*|*'://[::]'*) echo "make server: $(NO_SERVER_URL)" >&2; exit 2;; esac; \
	if [ -n "$$secret" ]; then export PREFECT_SERVER_API_AUTH_STRING="$$secret"; echo "make server: authentication on (clients need PREFECT_API_AUTH_STRING or $(PREFECT_AUTH_FILE))"; \
	else unset PREFECT_SERVER_API_AUTH_STRING; fi; \
	echo "make server: the UI, and the links runs print, at $(SERVER_URL) (SERVER_URL: give make worker, deploy, sweep and retrain the same)"; \
	$(BIN)/python -m pipeline.server.local --held-port '$(PREFECT_PORT)' >/dev/null || exit 2; \
	export PREFECT_SERVER_UI_API_URL='$(SERVER_URL)/api' PREFECT_UI_URL='$(SERVER_URL)'; \
	if [ -n "$$PREFECT_API_DATABASE_CONNECTION_URL" ]; then \
	found="$$($(BIN)/python -m pipeline.server.database upgrade)" || exit 2; echo "make server: $$found"; \
	export PREFECT_API_DATABASE_MIGRATE_ON_START=false; \
	else echo "make server: database SQLite in $(PREFECT_HOME) (one writer at a time; a team's server: DATABASE_URL=postgresql+asyncpg://..., docs/scaling-out.md)"; fi; \
	exec $(BIN)/prefect server start --host '$(PREFECT_HOST)' --port '$(PREFECT_PORT)'

worker deploy data-updated: export PREFECT_API_URL ?= $(SERVER_URL)/api
# What the deployments' retrains branch from and push to (prefect.yaml's build steps): `checkout`, this folder (one
# machine: your own commits; the branch stays here); `origin`, its URL (workers elsewhere; the branch is pushed
# there); or any git URL.
REPO ?= checkout
deploy: export CLASSIFIER_DEPLOY_REPO := $(REPO)
# A SERVER_URL given (command line or environment) is also where the clients' links point, and `make retrain`'s
# server; without one, Prefect makes the links from PREFECT_API_URL and make retrain uses the project's local server.
ifneq ($(origin SERVER_URL),file)
worker deploy data-updated sweep retrain: export PREFECT_UI_URL ?= $(SERVER_URL)
retrain: export PREFECT_API_URL ?= $(SERVER_URL)/api
endif

# This project's flows send a heartbeat event every 30 s wherever they run (deployments: prefect.yaml's
# job_variables; make run and make retrain: python -m pipeline's default), so that the
# `crash-silent-flow-runs` automation can tell a dead run from a live one.
# make sweep's own flow too: it waits for its points for as long as they train.
worker sweep: export PREFECT_FLOWS_HEARTBEAT_FREQUENCY ?= 30
# CRASH_AFTER=S: make deploy sets how long a run may go without a heartbeat before it is marked Crashed (default
# prefect.yaml's 90 s; at least 45, since heartbeats come every 30 s).
CRASH_AFTER ?=

# The worker runs with SIGINT at its default: one started from a script in the background
# (`make worker &` in a non-interactive shell) inherits SIGINT ignored, and then Prefect's handler,
# which re-raises the first SIGINT (or SIGTERM) against the handler it found, drops it; only the
# second stops the worker. `exec`: the worker is make's own child, with no shell in between.
DEFAULT_SIGINT := import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])

# A missing pool is created by the worker itself, as a process pool (Prefect's --create-pool-if-not-found): no
# second `prefect` command, which would cost its 1.5 s of imports on every start.
worker: $(ENV)  ## start a worker on work pool POOL=cpu|gpu (created if missing); stops on the first Ctrl-C
	exec $(BIN)/python -c '$(DEFAULT_SIGINT)' $(BIN)/prefect worker start --pool '$(POOL)' $(if $(LIMIT),--limit '$(LIMIT)')

deploy: $(ENV)  ## register prefect.yaml's deployments and automations (idempotent); REPO=origin for workers on other machines
	$(BIN)/python -m pipeline.server.deploy --file prefect.yaml $(if $(CRASH_AFTER),--crash-after '$(CRASH_AFTER)')

# Beyond one machine (docs/scaling-out.md, "Beyond one machine"). The default DVC remote: any DVC URL (a folder every machine
# mounts at the same path, s3://bucket/path, ssh://host/path, ...). .dvc/config is committed, so a URL
# with a password in it is refused: credentials come from the environment or `dvc remote modify --local`.
REMOTE ?= storage
# make sweep GRID="-S 'train.learning_rate=0.0003,0.001' -S 'model.hidden_sizes=[256,256],[512,512]'"
GRID ?=
SWEEP_FLAGS ?=
sweep bench-sweep: export PREFECT_API_URL ?= $(SERVER_URL)/api

.PHONY: remote sweep bench-sweep

remote: $(ENV)  ## set the default DVC remote: make remote URL=/mnt/dvc-store|s3://bucket/path|ssh://host/path
	@if [ -z '$(URL)' ]; then echo "make remote: give the remote's URL: make remote URL=s3://bucket/path (or /mnt/dvc-store, ssh://host/path)" >&2; exit 2; fi
	@if printf '%s' '$(URL)' | grep -Eq '^[A-Za-z][A-Za-z0-9+.-]*://[^/@]*:[^/@]*@'; then echo "make remote: refusing a URL with a password in it (.dvc/config is committed): give credentials through the environment or 'dvc remote modify --local $(REMOTE) ...'" >&2; exit 2; fi
	$(BIN)/dvc remote add --default --force '$(REMOTE)' '$(URL)'
	@$(REMOTE_PLUGIN)
	@echo "make remote: the default DVC remote is now '$(REMOTE)' = $(URL); share it: git add .dvc/config && git commit -m 'DVC remote' && git push, then dvc push"

sweep: $(ENV)  ## run a grid (GRID="-S 'key=a,b' -S ...", dvc exp run -S grammar) as one experiment per point on the pool's workers
	$(BIN)/python -m pipeline.sweep $(GRID) $(SWEEP_FLAGS)

# New data (docs/own-images.md): prefect.yaml's retrain-cpu deployment has a trigger on this event.
.PHONY: data-updated
data-updated: $(ENV)  ## announce new data to the server (event classifier.data.updated): retrain-cpu starts a retrain; says which run and where to watch it
	$(BIN)/python -m pipeline.server.data_updated

retrain: $(ENV)  ## retrain BASE (default main) now, in a workspace of its own; promotes only if as good
	$(BIN)/python -m pipeline retrain --base '$(BASE)' $(DEVICE_FLAG)

# The model registry (docs/retraining.md, "The champion's name"): GTO's tags on dvc.yaml's `classifier` artifact.
# .github/workflows/register.yml runs `register` on every push to main; PUSH=1 pushes the new tags to origin.
PUSH ?=
VERSION ?=
CHAMPION_DIR ?= champion

.PHONY: register champion

register: $(ENV)  ## name BASE's model (default main) the next version classifier@vX.Y.0 and assign it prod, if it changed (PUSH=1: push the tags)
	$(BIN)/python -m pipeline.registry register --rev '$(BASE)' $(if $(PUSH),--push)

champion: $(ENV)  ## fetch the champion (classifier#prod, or VERSION=v0.1.0) into CHAMPION_DIR (default champion/) for python -m classifier.training.predict
	$(BIN)/python -m pipeline.registry fetch --out '$(CHAMPION_DIR)' $(if $(VERSION),--version '$(VERSION)')

# Benchmarks (docs/performance.md); not part of `make test`. BENCH_FLAGS=--quick for a smoke run.
BENCH_FLAGS ?=

.PHONY: bench bench-gpu

bench-sweep: $(ENV)  ## a 4-point sweep on two loopback workers against one worker in turn; prints the wall-time ratio (~4 min)
	$(BIN)/python benchmarks/sweep_scaling.py $(BENCH_FLAGS)

bench: $(ENV)  ## training throughput vs the seed's loop and the matmul bound, then pipeline overhead, then prepare on 60,000 PNGs (~7 min)
	$(BIN)/python benchmarks/train_throughput.py $(BENCH_FLAGS)
	$(BIN)/python benchmarks/pipeline_overhead.py $(BENCH_FLAGS)
	$(BIN)/python benchmarks/prepare_folder.py $(BENCH_FLAGS)

# GPU machine (docs/gpu.md): bench-gpu and test-gpu need no .venv and no network. With the project's
# venv they use it; on a bare image (torch, no pydantic/DVC/Prefect) they use its python3 with src/ on
# the path and pydantic from the wheels `make gpu-wheels` put in .whl/ (git-ignored; carried along).
GPU_WHEELS := pydantic pydantic_core annotated-types typing-inspection
GPU_SITE := .whl/site
GPU_PYTHON = $(if $(wildcard $(BIN)/python),$(BIN)/python,PYTHONPATH='$(CURDIR)/src:$(CURDIR)/$(GPU_SITE)' python3)
GPU_SETUP = $(if $(wildcard $(BIN)/python),true,python3 -c 'import pydantic' 2>/dev/null || python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target $(GPU_SITE) .whl/*.whl)

.PHONY: test-gpu gpu-wheels

bench-gpu:  ## (a) seed loop and (b) fit (captured step), fp32 and bf16, vs the mm bound, device memory (under 3 min; needs CUDA)
	@$(GPU_SETUP)
	$(GPU_PYTHON) benchmarks/gpu_check.py $(BENCH_FLAGS)

test-gpu:  ## the GPU tests (tests/gpu) then bench-gpu, in one call on a GPU machine (under 5 min); no .venv needed
	@$(GPU_SETUP)
	$(GPU_PYTHON) -m pytest tests/gpu --confcutdir=tests/gpu -p no:cacheprovider -q -rs
	$(MAKE) --no-print-directory bench-gpu

gpu-wheels: $(ENV)  ## fetch pydantic's cp312 manylinux wheels (the venv's versions) into .whl/ for a GPU image without it
	rm -rf .whl && mkdir -p .whl
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $(GPU_WHEELS))
	@ls .whl

clean:  ## remove the virtual environment and caches (not data or models)
	rm -rf $(VENV) .pytest_cache .hypothesis src/*.egg-info
