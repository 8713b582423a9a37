"""Errors raised for bad user input.

Every message says what was wrong, what was expected and what to change. Command-line tools catch
`SlimError`, print the message and exit with a non-zero code instead of a traceback.
"""


class SlimError(Exception):
    """Base class of every error caused by the user's configuration or data."""


class ConfigError(SlimError, ValueError):
    """A configuration file, a command-line override or a distillation pair is invalid."""


class UnknownLossError(ConfigError):
    """A loss name that is not in the registry."""


class LayerNotFoundError(ConfigError):
    """A mapping names a sublayer that the model does not have."""


class ShapeMismatchError(ConfigError):
    """A student and a teacher feature cannot be compared as they are."""


class NonFiniteLossError(SlimError, FloatingPointError):
    """A loss term became NaN or infinite; the message names the term and its inputs."""
