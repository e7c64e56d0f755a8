"""User-facing errors: the CLI prints these as one line and exits non-zero, with nothing written."""


class TrainError(Exception):
    """A user mistake (bad data path, unknown preset, unusable checkpoint, ...)."""
