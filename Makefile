# Two commands do everything on a fresh Debian machine:
#   make run    install (first time) and start the agent on http://localhost:8080
#   make test   install (first time, incl. Chromium/espeak-ng) and run lint, types and every test tier
VENV   ?= .venv
STAMP  := $(VENV)/.installed
ARGS   ?=

.PHONY: run test lint docs bench clean

$(STAMP): pyproject.toml scripts/bootstrap.sh
	scripts/bootstrap.sh python

run: $(STAMP)
	$(VENV)/bin/ringback serve $(ARGS)

test: $(STAMP)
	scripts/bootstrap.sh system
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python -m pytest -ra $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/python -m signaling.settings > docs/configuration.md

bench: $(STAMP)
	$(VENV)/bin/python -m bench.audio_path
	$(VENV)/bin/python -m bench.conversation
	$(VENV)/bin/python -m bench.whisper_settings
	$(VENV)/bin/python -m bench.hearing

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
