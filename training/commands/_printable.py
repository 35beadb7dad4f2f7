"""Text from files (file and folder names, ROI names, reasons quoting them) made safe to
print on a terminal: a name must not forge an output line or drive the terminal.

Control characters (newline, carriage return, escape, …), other non-printable code points
and undecodable bytes (lone surrogates) are spelt as Python escapes (\\n, \\x1b, \\u200b).
"""

from __future__ import annotations

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: object) -> str:
    s = str(text)
    if s.isprintable():
        return s
    out = []
    for c in s:
        if c in _NAMED:
            out.append(_NAMED[c])
        elif c.isprintable():
            out.append(c)
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # an undecodable byte kept as a surrogate
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif ord(c) < 0x100:
            out.append(f"\\x{ord(c):02x}")
        elif ord(c) < 0x10000:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(f"\\U{ord(c):08x}")
    return "".join(out)
