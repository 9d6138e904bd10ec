"""What runs and records a run: its output folder, task slices, weights fingerprint, status
and merge."""
