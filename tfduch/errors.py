"""Exceptions raised by tfduch. Each message names the offending file, entry or setting."""


class TfduchError(Exception):
    """Base class for all tfduch errors."""


class DataError(TfduchError, ValueError):
    """A dataset file, image or caption entry is missing, corrupt or of the wrong shape."""


class ConfigError(TfduchError, ValueError):
    """A configuration file or override is invalid."""


class CacheError(TfduchError):
    """A cached artefact (features, converted weights, checkpoint) cannot be used."""


def run_command(args: object) -> int:
    """Run a parsed CLI command (``args.func(args)``); a tfduch error becomes one line on stderr and exit code 2.

    Why: users should see what is wrong with their input, not a traceback; unexpected errors still raise.
    """
    import os
    import sys

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        return int(args.func(args) or 0)  # type: ignore[attr-defined]
    except TfduchError as exc:
        print(f"tfduch: error: {exc}", file=sys.stderr)
        return 2
