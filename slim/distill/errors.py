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


def build_registered(registry, name, args, what, where=None):
    """`registry[name](**args)`, or a ConfigError that says where (e.g. "train_dataset"), names `what` (e.g.
    "dataset type") and lists the known names for an unknown one, the given arguments for bad arguments."""
    prefix = f"{where}: " if where else ""
    if name not in registry:
        unknown = f"{prefix}unknown" if where else "Unknown"
        raise ConfigError(f"{unknown} {what} {name!r}; known: {', '.join(sorted(registry))}.")
    try:
        return registry[name](**args)
    except TypeError as e:
        raise ConfigError(f"{prefix}could not build {what} {name} from {sorted(args)}: {e}"
                          if where else f"Could not build {what} {name} from {sorted(args)}: {e}") from None
