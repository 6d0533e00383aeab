"""The one exception type for mistakes a user can make (config, data, weights, paths)."""


class ISGANError(Exception):
    """A user-fixable problem; the message says what is wrong, where, and how to fix it."""


class BadImageError(ISGANError):
    """An image that cannot be decoded when a batch is loaded.

    Raised in a DataLoader worker, it reaches the trainer as ``BadImageError(text)`` where ``text`` is torch's
    "Caught BadImageError in DataLoader worker process N. Original Traceback ..." with the original message on
    its last line; that line is kept, so the error still prints as one line.
    """

    def __init__(self, message):
        last = message.rstrip().splitlines()[-1] if message.strip() else message
        super().__init__(last.split(f"{type(self).__name__}: ", 1)[-1])
