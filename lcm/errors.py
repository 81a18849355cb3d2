"""User-facing errors: one clear line, no traceback (see `lcm.eval.cli.main`)."""


class LCMError(Exception):
    """Bad input or bad state the user can fix. The message is the whole story."""


class ConfigError(LCMError, ValueError):
    """An invalid value of a config dataclass: a `ValueError` where dataclass validation expects one, and an
    `LCMError` so the CLI shows its one line instead of jsonargparse's traceback around it."""


def run_command(main) -> None:
    """Run a script's `main()` (the benchmarks): a known bad input (LCMError) ends with one `error: ...` line on
    stderr and exit code 2, as `lcm` does, instead of a traceback."""
    import sys

    try:
        main()
    except LCMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
