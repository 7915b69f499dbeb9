# The two commands a new user runs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.docs-installed

.PHONY: test test-all docs docs-serve demo compare install clean bench

$(PY):
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

# Reinstall only when the package metadata or the pinned versions change.
$(STAMP): pyproject.toml constraints.txt | $(PY)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	touch $(STAMP)

$(DOCS_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,docs]"
	touch $(DOCS_STAMP)

install: $(STAMP)

# The fast suite: everything but the tests marked slow.
test: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

# Everything, and the documentation site with broken links failing the build: what CI runs.
test-all: $(DOCS_STAMP)
	$(PY) -m pytest -q
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

# Train Sim-MPNet `tiny` on the embedded brain MRI (450 steps; 299 s on a 2-core AVX-512 CPU), evaluate, draw.
demo: $(STAMP)
	$(PY) -m simmpnet demo

# The same run for Sim-MPNet and a MONAI U-Net (the same steps), tables side by side.
compare: $(STAMP)
	$(PY) -m simmpnet compare

# Every benchmark on a quiet machine: CSV files into benchmarks/results/, then docs/benchmarks.md.
bench: $(STAMP)
	$(PY) benchmarks/bench.py all

clean:
	rm -rf $(VENV) build site *.egg-info src/*.egg-info
