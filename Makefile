# ssdet: the two quick-start commands are `make mini` (the main job on the mini world) and
# `make test`. Both create the virtual environment on first use (`make setup`), idempotently:
# a second `make setup` is a no-op unless requirements.txt or setup.py changed.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The stamp file records that the environment matches requirements.txt and setup.py.
STAMP := $(VENV)/.ssdet-installed
MINI_CONFIG ?= configs/mini/retinanet_R18_FPN_S1_self_train.yaml
# Processes per stage of `make mini`: the GPUs, or 2 on a machine without one.
MINI_PROCS ?= $$($(PY) -c 'import torch; print(torch.cuda.device_count() or 2)')
DETECTRON2_DATASETS ?= datasets
export DETECTRON2_DATASETS

.PHONY: setup mini test lint format bench clean-venv

setup: $(STAMP)

$(STAMP): requirements.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -r requirements.txt
	@# Detectron2 is not on the registry under its own name. Keep an existing install (e.g. an
	@# upstream source build); otherwise use the registry build sal-detectron2 (see STACK.md),
	@# whose cp310-tagged wheel needs pip's cross-target mode on newer Pythons.
	@$(PY) -c "import detectron2" 2>/dev/null || $(PY) -m pip install -q \
		--disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.10 \
		--target "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" \
		sal-detectron2==0.7.2
	$(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# The main job: generate the mini world if absent, then the whole self-training experiment:
# train the supervised teacher, pseudo-label mini-ImageNet, train the student, evaluate both and
# print teacher vs student AP. A rerun skips finished stages and resumes an interrupted one.
# Every stage runs as MINI_PROCS processes under Detectron2's launch: one per GPU, or on a CPU
# machine 2 one-thread processes (gloo), which train the mini model ~3x faster than one process
# with both threads (README, "The mini regime").
mini: setup
	$(PY) datasets/prepare_mini_world.py
	$(PY) tools/self_train.py --config $(MINI_CONFIG) --num-gpus $(MINI_PROCS)

# The 20 slowest tests are listed at the end: the CI budget is 15 minutes on 2 cores, install
# included (a fresh clone took 7 minutes here, 766 tests in 337 s, 2026-12-03).
test: setup
	$(PY) -m pytest -q --durations=20 tests

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: setup
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

# Speed measurements, written as JSON under benchmarks/results/.
bench: setup
	$(PY) benchmarks/run_all.py

clean-venv:
	rm -rf $(VENV)
