"""The ``spark-sparse`` command line: one sub-command per module in ``spark_sparse.commands``."""
from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings
from typing import Iterable, List, Optional

from .choices import routing_from_env
from .openmp import choose_spin
from .version import __version__

# Each module defines NAME, HELP, add_arguments(parser) and run(args) -> int. A command module is
# light to import (torch, timm and the model are imported inside its functions), so the command line
# answers --help or a mistyped option without loading them.
COMMANDS = [
    "spark_sparse.commands.demo",
    "spark_sparse.commands.pretrain",
    "spark_sparse.commands.export",
    "spark_sparse.commands.import_",
    "spark_sparse.commands.reconstruct",
    "spark_sparse.commands.bench",
]


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Adds "(default: …)" to an option's help unless the help already says its default, or there is
    none to show (None: required, or decided at run time; False: an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default is None or action.default is False or "(default" in text:
            return text
        return super()._get_help_string(action)


def build_parser(commands: Optional[Iterable[str]] = None) -> argparse.ArgumentParser:
    """The whole command line; ``commands`` (names) limits the sub-commands whose options are added
    (the others still show in the list of commands): ``main`` adds only the one it runs."""
    wanted = None if commands is None else set(commands)
    parser = argparse.ArgumentParser(
        prog="spark-sparse",
        description="SparK masked image modeling on a sparse encoder: the encoder computes only the "
                    "visible patches, with the same numbers as SparK's masked-dense reference.")
    parser.add_argument("--version", action="version", version=f"spark-sparse {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(name)
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.__doc__,
                           formatter_class=HelpFormatter)
        if wanted is None or module.NAME in wanted:
            module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def own_warnings_as_log_lines() -> None:
    """The package's own warnings (a routing cache ignored, a checkpoint skipped) print as one
    "WARNING: …" line, as the trainer's do, instead of Python's form with a source line; warnings
    from other libraries keep theirs."""
    if getattr(warnings.formatwarning, "own_lines", False):
        return  # already installed (main called again in one process)
    from . import __path__ as roots
    roots = tuple(os.path.join(os.path.abspath(root), "") for root in roots)
    python_form = warnings.formatwarning

    def formatted(message, category, filename, lineno, line=None):
        if os.path.abspath(filename).startswith(roots):
            return f"WARNING: {message}\n"
        return python_form(message, category, filename, lineno, line)

    formatted.own_lines = True
    warnings.formatwarning = formatted


def main(argv: Optional[List[str]] = None) -> int:
    for stream in (sys.stdout, sys.stderr):  # a terminal that cannot show "→" or "×" gets an escape, not a crash
        if hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")
    argv = sys.argv[1:] if argv is None else list(argv)
    # The top level takes only --help / --version, so the first word that is not an option names the command.
    parser = build_parser(commands=[word for word in argv if not word.startswith("-")][:1])
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    own_warnings_as_log_lines()
    choose_spin(getattr(args, "shared_cpu", False))  # before a command loads torch: libgomp reads it then
    try:  # a bad $SPARK_SPARSE_ROUTING is refused before a command writes anything (--routing overrides it)
        if getattr(args, "routing", None) is None:
            routing_from_env()
    except ValueError as e:
        print(f"spark-sparse: error: {e}", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
