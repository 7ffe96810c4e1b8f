# The README's two commands: `make figures` (regenerate every table and figure) and `make test`.
# Both create the pinned virtual environment first when it is missing or stale.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROFILE ?= quick
JOBS ?= 1
# EXECUTOR=slurm (or local, debug): where `make results` runs its runs (docs/cluster.md); default local
EXECUTOR ?=
# SET="dataset=cifar100 seeds=[1993]": parameters overriding params/$(PROFILE).yaml (results, figures)
SET ?=
SETS := $(foreach s,$(SET),--set '$(s)')

.PHONY: setup test figures results lab bench gpu-check clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

figures: setup
	$(PY) scripts/study.py figures --profile $(PROFILE) $(SETS)
	$(PY) scripts/study.py readme --profile $(PROFILE) $(SETS)

results: setup
	$(PY) scripts/study.py results --profile $(PROFILE) --jobs $(JOBS) $(if $(EXECUTOR),--executor $(EXECUTOR)) $(SETS)

lab: setup
	$(VENV)/bin/jupyter lab notebooks/

bench: setup
	$(PY) scripts/bench.py

gpu-check: setup
	bash scripts/gpu_check.sh

clean:
	rm -rf build figures
