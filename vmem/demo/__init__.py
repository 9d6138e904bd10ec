"""The worked example: a corpus and a model suite built on the spot, then the whole study."""
