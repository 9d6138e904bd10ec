"""The one exception vmem shows to users: a single line naming the input and what was expected."""


class VmemError(Exception):
    """A bad input or an unusable resource; the CLI prints it as one line and exits 2."""


def first_line(err: BaseException) -> str:
    """A library exception's message as one line (its type's name when it has none)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
