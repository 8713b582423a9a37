"""One registry for every distillation loss, built from `{'type': NAME, **args}`."""
import difflib
import inspect

from ..errors import ConfigError, UnknownLossError

LOSSES = {}


def register_loss(*aliases):
    """Class decorator: register a loss under its class name and the given aliases."""

    def wrap(cls):
        for name in (cls.__name__,) + aliases:
            if name in LOSSES and LOSSES[name] is not cls:
                raise RuntimeError(f"loss name {name!r} is registered twice")
            LOSSES[name] = cls
        return cls

    return wrap


def known_losses():
    return sorted(LOSSES)


def get_loss_class(name):
    if name not in LOSSES:
        close = difflib.get_close_matches(str(name), LOSSES, n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnknownLossError(
            f"Unknown loss {name!r}.{hint} Known losses: {', '.join(known_losses())}.")
    return LOSSES[name]


def build_loss(cfg):
    """Build a loss from `{'type': NAME, **args}` (a string NAME means no arguments)."""
    if isinstance(cfg, str):
        cfg = {"type": cfg}
    if not isinstance(cfg, dict) or "type" not in cfg:
        raise ConfigError(
            f"A loss must be given as {{'type': NAME, ...arguments}}, got {cfg!r}. "
            f"Known losses: {', '.join(known_losses())}.")
    args = dict(cfg)
    cls = get_loss_class(args.pop("type"))
    params = inspect.signature(cls.__init__).parameters
    accepted = [p for p in params if p != "self"]
    unknown = [k for k in args if k not in params]
    if unknown:
        raise ConfigError(
            f"{cls.__name__} does not take argument(s) {', '.join(map(repr, unknown))}; "
            f"it accepts: {', '.join(accepted) or 'no arguments'}.")
    try:
        return cls(**args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"Could not build {cls.__name__} from {cfg!r}: {e}") from e
