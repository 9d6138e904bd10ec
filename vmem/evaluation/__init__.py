"""Scoring training sequences: engines, score files in a run folder, task slices, merge, status."""
