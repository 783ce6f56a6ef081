# The course's two commands: `make course` (run every notebook) and `make test` (the whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= auto
STAMP := $(VENV)/.installed

.PHONY: install data course test lint notebooks clean

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m companion data fetch

course: data
	$(PY) -m companion run --scale $(SCALE) --out build

# Unit tests, papermill runs of the fastest notebooks, then nbval over every committed notebook (each notebook
# executes once there; strict mode turns a course claim that did not hold into a failing cell).
test: data
	$(PY) -m pytest tests
	COMPANION_STRICT_CLAIMS=1 $(PY) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider notebooks

lint: install
	$(VENV)/bin/ruff check companion tests notebooks

# Re-execute the committed notebooks in place at their own parameters (quick scale on a CPU).
notebooks: data
	$(PY) -m companion run --inplace $(NB)

clean:
	rm -rf build results
