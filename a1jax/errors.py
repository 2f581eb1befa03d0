"""The base of every error a user can cause (bad input, bad config): CLIs print these as one line."""


class A1Error(ValueError):
    """Bad input or configuration; the message alone tells the user what to fix."""
