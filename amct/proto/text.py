"""Parsing protobuf text files with errors that point at file:line:column."""
from __future__ import annotations

from google.protobuf import text_format
from google.protobuf.message import Message


def parse_text(text: str, msg: Message, path: str, error_cls: type[Exception], what: str = "") -> Message:
    """Parse ``text`` into ``msg``; a syntax error raises ``error_cls`` with
    ``path:line:col: reason`` (``what`` adds e.g. "not a valid ScaleOffsetRecord")."""
    try:
        text_format.Parse(text, msg, allow_unknown_extension=False)
    except text_format.ParseError as e:
        line, col = e.GetLine(), e.GetColumn()
        # str(e) starts with "line:col : " when protobuf knows the position.
        reason = str(e).split(" : ", 1)[1] if " : " in str(e) else str(e)
        pos = f"{line}:{col}" if line is not None else "?"
        raise error_cls(f"{path}:{pos}: {what + ': ' if what else ''}{reason}") from None
    return msg
