"""User-facing errors: one clear line, no traceback (`run_command`, which `lcm` and the benchmarks run under)."""
import sys


class LCMError(Exception):
    """Bad input or bad state the user can fix. The message is the whole story."""


class ConfigError(LCMError, ValueError):
    """An invalid value of a config dataclass: a `ValueError` where dataclass validation expects one, and an
    `LCMError` so the CLI shows its one line instead of jsonargparse's traceback around it."""


def run_command(main) -> None:
    """Run `main()` (`lcm` itself, the benchmark scripts): a known bad input (LCMError) ends with one `error: ...`
    line on stderr and exit code 2 instead of a traceback."""
    try:
        main()
    except LCMError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
