# Two commands: `make run` and `make test`. Each sets itself up from nothing.
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
BIN := $(VENV)/bin
# Reinstall only when the dependencies change.
STAMP := $(VENV)/.installed

.PHONY: help run test lint typecheck unit fuzz reliability proto clients clean

help:
	@echo "make run    start the service with the embedded Marketo sandbox on 127.0.0.1:50051"
	@echo "make test   ruff, mypy --strict, pytest (reliability suite: short profile) and make fuzz"
	@echo "make fuzz   fuzz Sync's C quick look under AddressSanitizer and UBSan"
	@echo "make reliability   the reliability suite's long profile; figures in build/"
	@echo "make proto  regenerate service/_proto from proto/"
	@echo "make clients  generate Python and TypeScript clients into gen/ (buf.gen.yaml; needs npm)"

run: $(STAMP)
	$(BIN)/marketo-destination serve --sandbox

test: lint typecheck unit fuzz

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy --strict service plugins sandbox marketo_destination_client marketo_destination_testing

unit: $(STAMP)
	$(BIN)/pytest

# Sync's C quick look (service/api/_wirecheck.c) reads untrusted bytes: its tests run again with
# it built under AddressSanitizer and UndefinedBehaviorSanitizer, with more fuzz examples.
FUZZ_EXAMPLES ?= 500
fuzz: $(STAMP)
	$(BIN)/python scripts/fuzz_wirecheck.py --examples $(FUZZ_EXAMPLES)

# The long profile of tests/reliability (docs/reliability.md); `make test` runs the short one.
RELIABILITY_FIGURES ?= build/reliability-figures.json
reliability: $(STAMP)
	rm -f $(RELIABILITY_FIGURES)
	RELIABILITY_PROFILE=long RELIABILITY_FIGURES=$(RELIABILITY_FIGURES) \
		$(BIN)/pytest tests/reliability -p no:cacheprovider --timeout=3600 -rA -s
	@echo "figures: $(RELIABILITY_FIGURES)"

proto: $(STAMP)
	PYTHON=$(BIN)/python scripts/gen_proto.sh

# Clients for other programs (buf.gen.yaml): Python with grpcio-tools, TypeScript with ts-proto.
TS_TOOLS := build/tsproto
clients: $(STAMP)
	mkdir -p $(TS_TOOLS)
	cp examples/typescript/package.json $(TS_TOOLS)/package.json
	npm install --no-audit --no-fund --prefix $(TS_TOOLS)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/buf generate

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml service/api/_wirecheck.c | $(BIN)/python
	$(BIN)/python -m pip install -e '.[dev,postgres]'
	touch $@

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
