"""``amct-caffe auto-calibrate``: accuracy-based automatic calibration (placeholder).

The parser is in place so the command is discoverable; ``run`` reports that
the feature is not available until ``amct.auto_calibration`` provides
``accuracy_based_auto_calibration`` with a command-line evaluator.  To wire it
up, replace ``run`` (the arguments below are what it will need).
"""
from __future__ import annotations

import argparse

from amct.cli import common
from amct.errors import AmctError

NAME = "auto-calibrate"
HELP = "accuracy-based automatic calibration (not available yet)"


class NotAvailableError(AmctError, NotImplementedError):
    """A subcommand whose implementation has not landed yet."""


def register(sub, parents) -> None:
    p = sub.add_parser(NAME, help=HELP, description=HELP + ".", parents=parents)
    common.add_model_args(p)
    common.add_data_args(p, required=False, labels=True)
    p.add_argument("--save-path", "--save_path", dest="save_path", metavar="PREFIX")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    raise NotAvailableError("auto-calibrate is not available yet in this version; use "
                            "'amct-caffe calibrate --skip-layers ...' with 'amct-caffe compare' to "
                            "find sensitive layers, or call amct.accuracy_based_auto_calibration "
                            "from Python")
