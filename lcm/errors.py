"""User-facing errors: one clear line, no traceback (see `lcm.eval.cli.main`)."""


class LCMError(Exception):
    """Bad input or bad state the user can fix. The message is the whole story."""
