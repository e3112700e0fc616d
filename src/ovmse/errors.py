"""The one exception type for mistakes a user can fix (bad config value, unknown map, bad file).

The CLI prints its message as one line on stderr and exits with code 2; library callers catch it.
A message names the bad value and what is allowed or how to fix it.
"""


class UserError(Exception):
    """A bad input the user can correct; the message says what was wrong and what to do."""


def warn_user(message: str) -> None:
    """Tell the user, on one stderr line, about settings that will not do what they likely
    expect (the run goes on)."""
    import sys

    print(f"ovmse: warning: {message}", file=sys.stderr, flush=True)
