"""Running the `vmem` CLI in-process in tests."""

from __future__ import annotations

from vmem.cli import main


def cli_error(capsys, argv: list[str]) -> str:
    """Run `vmem ARGV`, which must fail with exit 2 and exactly one line on stderr; that line."""
    capsys.readouterr()  # drop what earlier steps of the test printed
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("vmem: error: ") and err.count("\n") == 1, err
    return err.strip()
