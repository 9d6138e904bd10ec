"""Quiet output: vmem's own progress and warnings, the libraries' logs only with --verbose."""

from __future__ import annotations

import logging
import os
import warnings

QUIET_DEFAULTS = {
    "VLLM_LOGGING_LEVEL": "ERROR",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # also read by VllmEngine for its loading bar
    "TORCH_CPP_LOG_LEVEL": "ERROR",  # torch's C++ warnings ("NUMA binding: ...")
    "PYTHONWARNINGS": "ignore",  # the worker processes' FutureWarnings
}


_quiet = False


def is_quiet() -> bool:
    """Whether this process has turned the libraries' output off (its children do the same)."""
    return _quiet


def quiet_libraries() -> None:
    """vmem's own progress and warnings only: the libraries' logs, warnings and progress bars
    are off unless the environment already says otherwise. Environment variables reach vLLM's
    worker processes; this must run before vLLM, transformers or torch is imported."""
    global _quiet
    _quiet = True
    for name, value in QUIET_DEFAULTS.items():
        os.environ.setdefault(name, value)
    if os.environ["VLLM_LOGGING_LEVEL"] == "ERROR":
        # vLLM warns about Triton while importing, before its own logging is configured.
        logging.getLogger("vllm").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module=r"(torch|transformers|vllm|huggingface_hub)\b")
