# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo compare install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Reinstall only when the package metadata or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

# Train Sim-MPNet `tiny` on the embedded brain MRI (450 steps, about 10 minutes on a 2-core CPU), evaluate, draw.
demo: $(STAMP)
	$(PY) -m simmpnet demo

# The same run for Sim-MPNet and a MONAI U-Net (the same steps), tables side by side.
compare: $(STAMP)
	$(PY) -m simmpnet compare

bench: $(STAMP)
	cd benchmarks && ../$(PY) bench_dmwla.py && ../$(PY) bench_model.py && ../$(PY) bench_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
