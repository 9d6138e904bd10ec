"""The one exception vmem shows to users: a single line naming the input and what was expected."""


class VmemError(Exception):
    """A bad input or an unusable resource; the CLI prints it as one line and exits 2."""
