# Two commands for a newcomer: `make demo` (the training DAG end to end on the local stack)
# and `make test` (lint + every test). Both install what they need into ./.venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
UV_VERSION := 0.13.9
STAMP := $(VENV)/.installed
# One venv per SageMaker scikit-learn image (its Python and exact packages), see local_stack/images.py.
IMAGES_TABLE := plugins/mlops_sagemaker/sklearn_images.toml
IMAGES_STAMP := .venv-images/.installed

.PHONY: install test lint format demo ui bench clean

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet "uv==$(UV_VERSION)"
	$(BIN)/uv pip install --quiet --python $(BIN)/python -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

$(IMAGES_STAMP): $(STAMP) $(IMAGES_TABLE) local_stack/images.py
	$(BIN)/python -m local_stack.images build
	touch $(IMAGES_STAMP)

install: $(STAMP) $(IMAGES_STAMP)

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# pytest exits 5 when it collected nothing: a suite that runs no test is a failure here.
# Two workers (the machine's cores), one test module per worker at a time: a module's stack and
# its tests' order stay together (TEST_WORKERS=0 runs everything in one process).
TEST_WORKERS ?= 2
test: lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=15 -n $(TEST_WORKERS) --dist loadfile; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$rc

demo: install
	$(BIN)/python -m local_stack.demo

ui: install
	$(BIN)/python -m local_stack.ui

bench: install
	PYTHONPATH=. $(BIN)/python bench/dag_parse_time.py
	PYTHONPATH=. $(BIN)/python bench/runtime_overhead.py
	PYTHONPATH=. $(BIN)/python bench/extract_memory.py
	PYTHONPATH=. $(BIN)/python bench/extract_unload.py

# Also forgets the local AWS endpoint's saved state (.local/sagemaker: S3, jobs, registry);
# `LOCAL_STACK_CLEAN=1 make ui` forgets only that.
clean:
	rm -rf .local .pytest_cache .ruff_cache
