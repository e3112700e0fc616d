"""The one exception type for mistakes a user can fix (bad config value, unknown map, bad file).

The CLI prints its message as one line on stderr and exits with code 2; library callers catch it.
A message names the bad value and what is allowed or how to fix it.
"""


class UserError(Exception):
    """A bad input the user can correct; the message says what was wrong and what to do."""
