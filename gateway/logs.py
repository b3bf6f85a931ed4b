"""The gateway's log lines cannot be forged from a request.

Paths, tags, file names and header values reach the log from requests, decoded: ``%0A``
would end the line and start one the client wrote, ``%00`` would write a NUL.  ``escape``
writes every control character (C0, DEL, C1), the Unicode line and paragraph separators,
the bidirectional overrides and lone surrogates as ``\\xNN``/``\\uNNNN``; backslashes are
kept, so escaping twice changes nothing.  ``EscapeControls`` applies it to every record's
message, and indents tracebacks (whose last line may carry request data) so that no line
of one can pass for a record of its own.
"""

from __future__ import annotations

import logging
import re
import traceback

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_UNSAFE_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e"
                                 "\u2066-\u2069\ud800-\udfff]")
TRACEBACK_INDENT = "    | "


def _code(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def escape(text: str) -> str:
    """``text`` on one line, control characters written as escapes."""
    return _UNSAFE.sub(_code, text)


def _indent_block(text: str) -> str:
    text = _UNSAFE_BUT_NEWLINE.sub(_code, text.rstrip("\n"))
    return "\n".join(TRACEBACK_INDENT + line for line in text.split("\n"))


class EscapeControls(logging.Filter):
    """Rewrites a record so that it prints as one line (plus an indented traceback)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "_escaped", False):
            return True
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: the handler reports it as usual
            return True
        record.msg, record.args = escape(message.rstrip("\n")), None  # werkzeug ends its with \n
        if record.exc_info and record.exc_info[0] is not None and not record.exc_text:
            record.exc_text = _indent_block("".join(traceback.format_exception(*record.exc_info)))
        if record.stack_info:
            record.stack_info = _indent_block(record.stack_info)
        record._escaped = True
        return True


def install(*loggers: str, handlers: bool = False) -> None:
    """Add the filter to ``loggers`` (records they make) and, with ``handlers``, to the root
    logger's handlers (every record this process prints); idempotent."""
    targets: list = [logging.getLogger(name) for name in loggers]
    if handlers:
        targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(f, EscapeControls) for f in target.filters):
            target.addFilter(EscapeControls())
