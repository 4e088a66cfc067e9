"""Exceptions raised by tfduch. Each message names the offending file, entry or setting."""


class TfduchError(Exception):
    """Base class for all tfduch errors."""


class DataError(TfduchError, ValueError):
    """A dataset file, image or caption entry is missing, corrupt or of the wrong shape."""


class ConfigError(TfduchError, ValueError):
    """A configuration file or override is invalid."""


class CacheError(TfduchError):
    """A cached artefact (features, converted weights, checkpoint) cannot be used."""
