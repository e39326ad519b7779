"""Exit codes shared by every command, and the error a command raises for bad user input."""

OK, VIOLATION, USAGE, UNKNOWN = 0, 1, 2, 3


class UsageError(Exception):
    """Bad input from the user; printed as one `error:` line, exit 2."""
