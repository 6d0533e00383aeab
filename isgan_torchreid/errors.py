"""The one exception type for mistakes a user can make (config, data, weights, paths)."""


class ISGANError(Exception):
    """A user-fixable problem; the message says what is wrong, where, and how to fix it."""
