# Two set-up commands: `make demo` and `make test`. Both create .venv if missing.
PY      := .venv/bin/python
PIP     := .venv/bin/pip
STAMP   := .venv/.installed
export OMP_NUM_THREADS ?= 2

.PHONY: demo serve test test-slow bench lint format install clean chromium report screenshot app-screenshot results

# `make report`: the results page and tables from evaluate records (RESULTS: one or more .jsonl files).
RESULTS    ?= runs/eval/toybench.jsonl
REPORT     ?= report
MARKDOWN   ?= docs/results.md
SCREENSHOT ?= docs/report.png

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU build on this machine's disk (a bare `torch` pulls a multi-GB CUDA build).
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	.venv/bin/pyramidal-wan demo

# The browser app on http://127.0.0.1:7860 (the bundled default model; `pyramidal-wan serve --help`).
serve: $(STAMP)
	.venv/bin/pyramidal-wan serve

# The system Chromium that Playwright drives for the browser tests (the report page, the app: they skip
# without it; Playwright downloads no browser). Best effort: only as root with apt-get, bounded in time, and
# never an error (the tests then say they skipped).
chromium:
	@test -x /usr/bin/chromium || { command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && \
	  timeout 600 sh -c 'apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends chromium' >/dev/null 2>&1; } || \
	  echo "chromium not installed (needs root, apt-get and the network): the browser tests will skip"

# The import layers (pyproject.toml [tool.importlinter]) first: a broken contract fails before the tests run.
test: $(STAMP) chromium
	.venv/bin/lint-imports
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	$(PY) benchmarks/bench_operators.py
	$(PY) benchmarks/bench_pipeline.py
	$(PY) benchmarks/bench_training.py

# The toy family's ToyBench records, docs/results.md, report/ and docs/report.png (scripts/toy_results.sh).
results: $(STAMP) chromium
	bash scripts/toy_results.sh

report: $(STAMP)
	.venv/bin/pyramidal-wan report --results $(RESULTS) --out $(REPORT) --markdown $(MARKDOWN)

# A full-page PNG of the report (run `make report` first): Playwright on the system Chromium.
# docs/app.png and docs/app-side-by-side.png: the app's browser test, saving its screenshots into docs/.
app-screenshot: $(STAMP) chromium
	APP_SCREENSHOTS=docs $(PY) -m pytest -q tests/app/test_serve.py -k stage_previews_and_shows_bad_input

screenshot: $(STAMP) chromium
	$(PY) -m pyramidal_wan.eval.page_check screenshot $(REPORT)/index.html $(SCREENSHOT)

lint: $(STAMP)
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .

format: $(STAMP)
	.venv/bin/ruff format .
	.venv/bin/ruff check --fix .

clean:
	rm -rf .venv .pytest_cache build src/*.egg-info
