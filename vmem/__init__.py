"""vmem: verbatim memorization of training sequences, scored with vLLM."""

__version__ = "0.1.0"
