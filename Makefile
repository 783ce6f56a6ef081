# The course's two commands: `make course` (run every notebook) and `make test` (the whole test suite).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SCALE ?= auto
STAMP := $(VENV)/.installed

.PHONY: install data course test test-fast lint notebooks clean student site bench gpu-check

$(STAMP): pyproject.toml requirements-lock.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c requirements-lock.txt -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

data: install
	$(PY) -m companion data fetch

# Seeds run in worker processes, one per core (protocol.over_seeds; the same numbers as one by one, one thread each).
course: data
	COMPANION_SEED_WORKERS=$${COMPANION_SEED_WORKERS:-auto} $(PY) -m companion run --scale $(SCALE) --out build

# Unit tests (`make test-fast` runs these alone) and every notebook rerun at another seed through the runner (the seed
# guard), then nbval over every committed notebook (strict mode turns a course claim that did not hold into a failing
# cell; their results files go to build/nbval/, not over the committed ones beside the notebooks). Two pytest-xdist
# workers with one thread each use a 2-core machine better than one process with two threads; since they already fill
# the cores, the notebooks' seeds run in their own kernel (COMPANION_SEED_WORKERS=1; tests/conftest.py does the same).
TEST_WORKERS ?= 2
THREADS := OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 COMPANION_SEED_WORKERS=1
test: data
	$(THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --durations 15 tests
	COMPANION_STRICT_CLAIMS=1 COMPANION_RESULTS_BASE=$(CURDIR)/build/nbval $(THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile --nbval-lax --nbval-current-env -p no:cacheprovider --ignore-glob='*.failed.ipynb' notebooks

# The unit tier alone (no notebook runs, no test marked slow): a change to the package checked in minutes.
test-fast: data
	$(THREADS) $(PY) -m pytest -n $(TEST_WORKERS) --dist worksteal --durations 15 -m "not slow" tests

# ruff, then import-linter: the package's layers (core <- experiments <- course) and no import cycles.
lint: install
	$(VENV)/bin/ruff check companion tests notebooks docs benchmarks
	$(VENV)/bin/ruff format --check companion tests docs benchmarks
	$(VENV)/bin/lint-imports

# Ratios of timings measured side by side (benchmarks/README.md); writes benchmarks/results/bench.json, then the
# full-scale runtime estimate from the committed notebooks' cell timings (benchmarks/results/fullscale.json).
bench: install
	$(THREADS) $(PY) -m benchmarks.bench
	$(THREADS) $(PY) -m benchmarks.fullscale

# On a machine with a GPU (under 5 minutes): every accelerated variant against the fp32 CPU run.
gpu-check: install
	$(PY) -m benchmarks.gpu_check

# The student edition of every notebook (solutions removed, exercise outputs cleared), to hand out.
student: install
	$(PY) -m companion student build/student

# The course website: the committed, executed notebooks rendered without running them (Sphinx + myst-nb).
site: install
	$(PY) docs/build.py

# Re-execute the committed notebooks in place at their own parameters (quick scale on a CPU). A notebook with
# uncommitted edits is refused; `make notebooks FORCE=--force` runs it anyway (the old version kept as .prev).
notebooks: data
	$(PY) -m companion run --inplace $(FORCE) $(NB)

clean:
	rm -rf build results
