"""Reference tables generated from the code at build time, so that the docs cannot drift from it.

mkdocs.yml lists this file under `hooks:`; a page that holds a marker gets the table in its place:

    <!-- table: losses -->          every loss of the registry (slim/distill/losses/registry.py), with its names,
                                    arguments and defaults, and the first sentence of its docstring
    <!-- table: flags COMMAND -->   every flag of a command (distill_train, train, eval, export, ...) as its
                                    argparse parser defines it: option strings, default, help

tests/test_docs.py builds the site and checks the tables against the registry and the parsers. The parsers are
taken from each command's own main(): argparse's parse_args is replaced, for the call, by one that hands the
parser back instead of parsing (each command builds its parser inside main()).
"""
import argparse
import html
import importlib
import inspect
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# command -> (module of slim/apps, arguments main() needs to reach its parser)
COMMANDS = {
    "distill_train": ("distill", []), "train": ("train", []), "eval": ("evaluate", []),
    "export": ("export", []), "predict": ("predict", []), "infer": ("infer", []),
    "list_layers": ("list_layers", []), "prune_layers": ("prune_layers", []),
    "prepare_data": ("prepare_data", []), "cache": ("cache", []), "ptq": ("ptq", []), "act": ("act", []),
    "pipeline": ("pipeline", []),
}


def loss_modules():
    """Every module of the package that registers a loss (`@register_loss`): importing them fills the registry."""
    found = []
    for base, _, files in os.walk(os.path.join(ROOT, "slim")):
        for name in sorted(files):
            if name.endswith(".py") and name != "registry.py":
                path = os.path.join(base, name)
                with open(path) as f:
                    if "@register_loss" in f.read():
                        found.append(os.path.relpath(path, ROOT)[:-3].replace(os.sep, "."))
    return sorted(found)

MARKER = re.compile(r"<!--\s*table:\s*(\w+)(?:\s+(\w+))?\s*-->")


class _Parser(Exception):
    """Carries the parser out of a command's main()."""


def command_parser(name):
    """The argparse parser of a command (see COMMANDS)."""
    module, argv = COMMANDS[name]
    main = importlib.import_module(f"slim.apps.{module}").main
    original = argparse.ArgumentParser.parse_args

    def hand_back(self, args=None, namespace=None):
        raise _Parser(self)

    argparse.ArgumentParser.parse_args = hand_back
    try:
        main(list(argv))
    except _Parser as found:
        return found.args[0]
    finally:
        argparse.ArgumentParser.parse_args = original
    raise RuntimeError(f"{name}: main() returned without building its parser")


def flag_rows(name):
    """[(option strings, default, help)] of a command's flags (a sub-command's prefixed by its name)."""
    return _rows(command_parser(name))


def _rows(parser, prefix=""):
    rows = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, subparser in action.choices.items():
                rows += _rows(subparser, f"{prefix}{sub} ")
            continue
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        if action.help == argparse.SUPPRESS:
            continue
        default = "" if action.default in (None, False, argparse.SUPPRESS) else repr(action.default)
        rows.append((prefix + ", ".join(action.option_strings), default, " ".join((action.help or "").split())))
    return rows


def loss_rows():
    """[(name, aliases, arguments with defaults, first sentence of the docstring)] of every registered loss."""
    for module in loss_modules():
        importlib.import_module(module)
    from slim.distill.losses.registry import LOSSES
    by_class = {}
    for name, cls in LOSSES.items():
        by_class.setdefault(cls, []).append(name)
    rows = []
    for cls, names in sorted(by_class.items(), key=lambda item: item[0].__name__):
        aliases = [n for n in names if n != cls.__name__]
        params = [p for p in inspect.signature(cls.__init__).parameters.values() if p.name != "self"
                  and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        args = ", ".join(p.name if p.default is p.empty else f"{p.name}={p.default!r}" for p in params)
        rows.append((cls.__name__, ", ".join(aliases), args, first_sentence(cls.__doc__)))
    return rows


def first_sentence(doc):
    text = " ".join((inspect.cleandoc(doc or "")).split("\n\n")[0].split())
    match = re.match(r"(.+?\.)(\s|$)", text)
    return match.group(1) if match else text


def _cell(text):
    return html.escape(str(text), quote=False).replace("|", "\\|") if text else ""


def _code(text):
    return f"`{text}`".replace("|", "\\|") if text else ""


def losses_table():
    lines = ["| loss | also registered as | arguments (defaults) | what it computes |", "| --- | --- | --- | --- |"]
    for name, aliases, args, summary in loss_rows():
        lines.append(f"| `{name}` | {_cell(aliases)} | {_code(args)} | {_cell(summary)} |")
    return "\n".join(lines)


def flags_table(name):
    lines = ["| flag | default | what it does |", "| --- | --- | --- |"]
    for flags, default, text in flag_rows(name):
        lines.append(f"| {_code(flags)} | {_code(default)} | {_cell(text)} |")
    return "\n".join(lines)


def render(markdown):
    """A page's markdown with every table marker replaced by its table."""
    def table(match):
        kind, arg = match.group(1), match.group(2)
        if kind == "losses":
            return losses_table()
        if kind == "flags" and arg in COMMANDS:
            return flags_table(arg)
        raise ValueError(f"unknown table marker {match.group(0)!r}")
    return MARKER.sub(table, markdown)


def on_page_markdown(markdown, page, config, files):  # mkdocs hook
    return render(markdown)
