"""The ``amct-caffe`` command line (also ``python -m amct``).

Each subcommand is one module exposing ``NAME``, ``HELP``,
``register(subparsers, parents)`` and a ``run(args) -> exit status`` set as the
parser's ``func``; adding a subcommand is one module plus one entry in
``SUBCOMMANDS``.

Exit status: 0 success; 2 for every error the toolkit reports on purpose
(``AmctError``: bad model, data, config, record...), for a file that cannot be
read or written, and for bad arguments (argparse); 1 for an unexpected
internal failure; 130 when interrupted.  Without ``--debug`` an error is one
line on stderr: ``amct-caffe: error: <message>``.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback
from typing import Sequence

from amct.errors import AmctError

PROG = "amct-caffe"

#: Subcommand modules (``amct.cli.<module>``), in the order ``--help`` lists them.
SUBCOMMANDS = ("calibrate_cmd", "convert_cmd", "inspect_cmd", "compare_cmd", "evaluate_cmd",
               "auto_calibrate_cmd", "demo_cmd")

EXIT_OK, EXIT_INTERNAL, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130


class _Parser(argparse.ArgumentParser):
    """Bad arguments give one line, like every other error (argparse prints the
    whole usage block first); subcommand parsers inherit this class."""

    def error(self, message: str):
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (usage: {self.prog} --help)\n")


def _global_options(suppress: bool) -> argparse.ArgumentParser:
    """--quiet/--debug, accepted before or after the subcommand.

    The copy attached to subcommands uses SUPPRESS defaults, so a flag given
    before the subcommand is not reset by the subparser's own default.
    """
    p = argparse.ArgumentParser(add_help=False)
    d = {"default": argparse.SUPPRESS} if suppress else {"default": False}
    g = p.add_argument_group("global options")
    g.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors; no progress bars", **d)
    g.add_argument("--debug", action="store_true",
                   help="debug logging and full tracebacks on errors", **d)
    g.add_argument("--disable-pass", dest="disable_pass", action="append", metavar="NAME",
                   help="skip a graph pass by name (repeatable), e.g. fold_bn_scale_into_next_conv",
                   **({"default": argparse.SUPPRESS} if suppress else {"default": []}))
    return p


def build_parser() -> argparse.ArgumentParser:
    from amct import __version__

    parser = _Parser(
        prog=PROG, parents=[_global_options(False)],
        description="INT8 post-training quantization of Caffe models for Ascend NPUs "
                    "(AMCT-compatible, with its own numpy Caffe runtime).",
        epilog="Environment: AMCT_LOG_LEVEL (console) and AMCT_LOG_FILE_LEVEL "
               "(amct_log/amct_caffe.log) = DEBUG|INFO|WARNING|ERROR.  "
               f"Run '{PROG} <command> --help' for a command's options.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    sub.required = True
    parents = [_global_options(True)]
    for mod in SUBCOMMANDS:
        importlib.import_module(f"amct.cli.{mod}").register(sub, parents)
    return parser


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``amct-caffe``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    debug, quiet = getattr(args, "debug", False), getattr(args, "quiet", False)
    try:
        from amct.log import setup_logging

        setup_logging("DEBUG" if debug else "WARNING" if quiet else None)
        from amct.passes import disabled_passes

        with disabled_passes(getattr(args, "disable_pass", [])):
            return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (AmctError, OSError) as e:
        if debug:
            traceback.print_exc()
        logging.getLogger("amct").debug("error: %s", e, exc_info=True)
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # noqa: BLE001 - last resort: one line unless --debug
        if debug:
            traceback.print_exc()
        print(f"{PROG}: error: internal error: {type(e).__name__}: {_one_line(e)} "
              "(rerun with --debug for the traceback)", file=sys.stderr)
        return EXIT_INTERNAL


__all__ = ["main", "build_parser", "SUBCOMMANDS"]
