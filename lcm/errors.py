"""User-facing errors: one clear line, no traceback (see `lcm.eval.cli.main`)."""


class LCMError(Exception):
    """Bad input or bad state the user can fix. The message is the whole story."""


class ConfigError(LCMError, ValueError):
    """An invalid value of a config dataclass: a `ValueError` where dataclass validation expects one, and an
    `LCMError` so the CLI shows its one line instead of jsonargparse's traceback around it."""
