# lossatlas — everything starts from a fresh clone with only Python and make.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
TORCH  := torch==2.13.0

.PHONY: install demo test test-slow bench lint docs studies clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# CPU torch first, pinned, so nothing later pulls a CUDA build.
	$(PIP) install -q $(TORCH)
	# [hf] (transformers: no torch, no torchvision; ~10 s) so the Hugging Face tests run in CI too.
	$(PIP) install -q -e ".[test,hf]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lossatlas demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

# Benchmarks run in their own venv (.venv-bench: CPU torch, lossatlas, the peer tools); see benchmarks/Makefile.
bench:
	$(MAKE) -C benchmarks PYTHON=$(PYTHON) all

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy

docs: $(STAMP)
	$(VENV)/bin/typer lossatlas.cli utils docs --name lossatlas --output docs/cli.md
	sed -i "s/&#x27;/'/g" docs/cli.md
	sed -i '1i <!-- Generated: .venv/bin/typer lossatlas.cli utils docs --name lossatlas --output docs/cli.md (make docs) -->\n' docs/cli.md
	$(PY) -c "from lossatlas.studies.tables import write_studies_doc; write_studies_doc('docs/studies.md', 'docs/studies')"

# The full preset of every study (hours on 2 cores; `make studies STUDIES=ccnn` for one); each results.json is checked in under docs/studies/.
STUDIES := critical-points deep-linear single-neuron safran-shamir xor-jellyfish index-vs-error \
	goodfellow mnist1d-baselines batch-size-weight-decay optimizer-switch skip-connections initialisation ccnn \
	overparameterisation safran-shamir-overparam random-directions nguyen-hein mode-connectivity width-effect ccnn-depth
studies: $(STAMP)
	mkdir -p docs/studies
	for s in $(STUDIES); do $(VENV)/bin/lossatlas study run $$s --full --out runs/studies || exit 1; \
		cp runs/studies/$$s/results.json docs/studies/$$s.json; done
	$(MAKE) docs

clean:
	rm -rf $(VENV) .venv-bench runs .pytest_cache
