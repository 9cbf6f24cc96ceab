# Two commands do everything on a fresh Debian machine:
#   make run    install (first time) and start the agent on http://localhost:8080
#   make test   install (first time, incl. Chromium/espeak-ng) and run lint, types and every test tier
#
# Targets (`make help` prints this list):
#   run         start the agent (ARGS: more `ringback serve` flags)
#   check       the quick tier, for every change: ruff, mypy, unit and fast integration tests
#               (no e2e, browser, netem or slow tests); about 1.5 min on 2 cores
#   test        the full suite (CI runs this): ruff, mypy and every test tier
#   lint        ruff and mypy only
#   docs        regenerate docs/configuration.md from signaling/settings.py
#   bench       every benchmark in bench/ in its quick mode; JSON in bench/results/quick/
#   bench-full  the benchmarks' full runs (long: tens of minutes); JSON in bench/results/
#   clean       remove the venv and the tools' caches
# ARGS is passed to pytest by check and test (e.g. ARGS="-k jitter -x").
VENV   ?= .venv
STAMP  := $(VENV)/.installed
ARGS   ?=
QUICK  := bench/results/quick

.PHONY: help run check test lint docs bench bench-full clean

help:
	@sed -n '/^# Targets/,/^# ARGS/p' Makefile | sed 's/^# \{0,1\}//'

$(STAMP): pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh python

run: $(STAMP)
	$(VENV)/bin/ringback serve $(ARGS)

check: $(STAMP)
	scripts/bootstrap.sh system
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -ra -m "not e2e and not browser and not netem and not slow" $(ARGS)

test: $(STAMP)
	scripts/bootstrap.sh system
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -ra $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/python -m signaling.settings > docs/configuration.md

# bench.echo_server is not a benchmark: bench.capacity starts it for its transport-only ramp.
# bench.conversation has no quick mode: 4 turns per variant instead of 20.
bench: $(STAMP)
	@mkdir -p $(QUICK)
	@echo "bench: skipping bench.echo_server (a helper that bench.capacity starts, not a benchmark)"
	@echo "bench: bench.tts_pool only in bench-full (it checks out an older ref to compare)"
	$(VENV)/bin/python -m bench.send_path --quick --json $(QUICK)/send_path.json
	$(VENV)/bin/python -m bench.audio_path --quick --json $(QUICK)/audio_path.json
	$(VENV)/bin/python -m bench.whisper_settings --quick --json $(QUICK)/whisper_settings.json
	$(VENV)/bin/python -m bench.whisper_batch --quick --json $(QUICK)/whisper_batch.json
	$(VENV)/bin/python -m bench.barge_in --quick --json $(QUICK)/barge_in.json
	$(VENV)/bin/python -m bench.llm_client_ttft --requests 50 --json $(QUICK)/llm_client_ttft.json
	$(VENV)/bin/python -m bench.tool_overhead --quick --json $(QUICK)/tool_overhead.json
	$(VENV)/bin/python -m bench.conversation --turns 4 --json $(QUICK)/conversation.json
	$(VENV)/bin/python -m bench.hearing --quick --json $(QUICK)/hearing.json
	$(VENV)/bin/python -m bench.soak --quick --json $(QUICK)/soak.json
	$(VENV)/bin/python -m bench.capacity --quick --json $(QUICK)/capacity.json

bench-full: $(STAMP)
	$(VENV)/bin/python -m bench.send_path --json bench/results/send_path.json
	$(VENV)/bin/python -m bench.audio_path --json bench/results/audio_path.json
	$(VENV)/bin/python -m bench.whisper_settings
	$(VENV)/bin/python -m bench.whisper_batch --json bench/results/whisper_batch.json
	$(VENV)/bin/python -m bench.barge_in --json bench/results/barge_in.json
	$(VENV)/bin/python -m bench.tts_pool
	$(VENV)/bin/python -m bench.llm_client_ttft --json bench/results/llm_client_ttft.json
	$(VENV)/bin/python -m bench.tool_overhead --json bench/results/tool_overhead.json
	$(VENV)/bin/python -m bench.conversation
	$(VENV)/bin/python -m bench.hearing
	$(VENV)/bin/python -m bench.soak
	$(VENV)/bin/python -m bench.capacity

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
