"""Shared fixtures live in plugin modules, one per real component the tests start."""

pytest_plugins = ["tests.s3_server", "tests.models", "tests.slurm_cluster", "tests.hub_cache"]
