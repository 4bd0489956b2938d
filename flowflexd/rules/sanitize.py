"""Make untrusted text (file names, sidecar values) safe to show on one line."""

from __future__ import annotations

import unicodedata

# Control characters, format characters (bidi overrides, zero-width marks),
# lone surrogates (bytes that were not UTF-8) and line/paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def printable(text: str) -> str:
    """``text`` with every character that could break or fake a log line escaped.

    Bytes that were not valid UTF-8 (carried by ``os.fsdecode`` as lone
    surrogates) come out as ``\\xNN``; control and format characters as
    ``\\n``, ``\\r``, ``\\t``, ``\\xNN`` or ``\\uNNNN``.
    """
    if text.isascii() and text.isprintable():
        return text
    out: list[str] = []
    for char in text:
        if unicodedata.category(char) not in _UNSAFE_CATEGORIES:
            out.append(char)
            continue
        code = ord(char)
        if char in _NAMED:
            out.append(_NAMED[char])
        elif 0xDC80 <= code <= 0xDCFF:  # surrogateescape's stand-in for one raw byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def asset_name(name: str) -> str:
    """The file name to give FlowFlex: valid UTF-8, no control or format characters.

    FlowFlex may show it to the people a flow messages (a WhatsApp document's
    name), so bytes that were not UTF-8 become U+FFFD and control or format
    characters become ``_``; the extension, and with it the type, is kept.
    """
    if name.isascii() and name.isprintable():  # most names: nothing to replace
        return name
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return "".join(
        "_" if unicodedata.category(char) in _UNSAFE_CATEGORIES else char for char in text
    )
