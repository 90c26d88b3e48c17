"""Logging set-up with AMCT's environment variables.

AMCT for Caffe reads two variables: ``AMCT_LOG_LEVEL`` for the console and
``AMCT_LOG_FILE_LEVEL`` for the log file ``amct_log/amct_caffe.log`` in the
working directory.  Both take DEBUG, INFO, WARNING or ERROR (any case) and
default to INFO.  Everything logs through the standard ``logging`` module under
the logger ``"amct"``, so library users who configure logging themselves can
ignore this module entirely.
"""
from __future__ import annotations

import logging
import os
import sys

from amct.errors import ConfigError

LOGGER_NAME = "amct"
CONSOLE_ENV = "AMCT_LOG_LEVEL"
FILE_ENV = "AMCT_LOG_FILE_LEVEL"
LOG_DIR = "amct_log"
LOG_FILE = "amct_caffe.log"
LEVELS = {"DEBUG": logging.DEBUG, "INFO": logging.INFO,
          "WARNING": logging.WARNING, "ERROR": logging.ERROR}

# Marks the handlers this module installed, so a second setup replaces them
# instead of duplicating every line.
_OWN = "_amct_own_handler"


def get_logger(name: str | None = None) -> logging.Logger:
    """The toolkit's logger, or its child ``amct.<name>``."""
    return logging.getLogger(LOGGER_NAME if not name else f"{LOGGER_NAME}.{name}")


def parse_level(value: str | None, variable: str) -> int:
    """A level from an environment value; unset or empty means INFO."""
    if value is None or not value.strip():
        return logging.INFO
    level = LEVELS.get(value.strip().upper())
    if level is None:
        raise ConfigError(f"environment variable {variable}={value!r} is not a log level; "
                          f"use one of {', '.join(LEVELS)} (case-insensitive)")
    return level


def setup_logging(console_level: int | str | None = None, file_level: int | str | None = None,
                  *, log_dir: str | None = None, stream=None) -> logging.Logger:
    """Attach a console and a file handler to the ``amct`` logger.

    Levels default to ``AMCT_LOG_LEVEL`` / ``AMCT_LOG_FILE_LEVEL``; an explicit
    argument (a ``logging`` level or its name) wins over the environment.  The
    log file is opened lazily, so a run that logs nothing at the file level
    leaves no ``amct_log`` directory behind.  Calling this again replaces the
    handlers it installed before.
    """
    console = _level(console_level, CONSOLE_ENV)
    filelvl = _level(file_level, FILE_ENV)
    logger = get_logger()
    for h in [h for h in logger.handlers if getattr(h, _OWN, False)]:
        logger.removeHandler(h)
        h.close()
    logger.setLevel(min(console, filelvl))
    # The toolkit's messages should not also reach a root handler a host
    # application configured, or they would print twice.
    logger.propagate = False

    ch = logging.StreamHandler(stream if stream is not None else sys.stderr)
    ch.setLevel(console)
    ch.setFormatter(logging.Formatter("%(asctime)s [%(levelname)s] %(message)s", "%H:%M:%S"))
    setattr(ch, _OWN, True)
    logger.addHandler(ch)

    path = os.path.join(log_dir if log_dir is not None else LOG_DIR, LOG_FILE)
    fh = _LazyFileHandler(path)
    fh.setLevel(filelvl)
    fh.setFormatter(logging.Formatter(
        "%(asctime)s [%(levelname)s] %(name)s %(filename)s:%(lineno)d %(message)s"))
    setattr(fh, _OWN, True)
    logger.addHandler(fh)
    return logger


def log_file_path(logger: logging.Logger | None = None) -> str | None:
    """Where the installed file handler writes (None if setup_logging was not called)."""
    for h in (logger or get_logger()).handlers:
        if isinstance(h, _LazyFileHandler):
            return h.baseFilename
    return None


def _level(value: int | str | None, variable: str) -> int:
    if value is None:
        return parse_level(os.environ.get(variable), variable)
    if isinstance(value, int):
        return value
    return parse_level(value, variable)


class _LazyFileHandler(logging.FileHandler):
    """A FileHandler that creates its directory on the first record it writes."""

    def __init__(self, path: str) -> None:
        super().__init__(path, mode="a", encoding="utf-8", delay=True)

    def emit(self, record: logging.LogRecord) -> None:
        if self.stream is None:
            try:
                os.makedirs(os.path.dirname(self.baseFilename), exist_ok=True)
            except OSError:
                # Logging must never break a run; the console still has it.
                return
        super().emit(record)
