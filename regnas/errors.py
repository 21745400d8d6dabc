"""The one error family regnas raises for bad input or environment; the CLI maps it to exit 2."""


class RegnasError(Exception):
    """A problem the user can fix: the message names the problem and the fix, on one line."""
