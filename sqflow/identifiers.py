"""Identifiers that become parts of file paths (run ids, BI table names) and the one pattern
they must match, so that no value can name a file outside the folder it is meant for.

A safe identifier is 1-128 characters from ``A-Z a-z 0-9 . _ -``, starts with a letter or
digit, and is not ``.``/``..`` (so it holds no ``/``, no ``..`` component, no NUL and no
leading dot that would hide it). Run ids made by :func:`sqflow.layout.new_run_id`
(``20260101T020000Z-1a2b3c4d``) and every contract table name match it.
"""

from __future__ import annotations

import re

__all__ = ["SAFE_IDENTIFIER", "UnsafeIdentifier", "check_identifier"]

#: the pattern every path-forming identifier must match (see the module docstring)
SAFE_IDENTIFIER = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class UnsafeIdentifier(ValueError):
    """An identifier that would not stay one path component (names the field and the value)."""


def check_identifier(value: object, field: str) -> str:
    """``value`` when it is a safe identifier (see the module docstring), else
    :class:`UnsafeIdentifier` naming ``field``, the value and the valid form."""
    if not isinstance(value, str) or not SAFE_IDENTIFIER.match(value) or ".." in value:
        raise UnsafeIdentifier(
            f"{field} {value!r} is not a safe identifier: valid are 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit, without '..' "
            "(it becomes part of a file path)"
        )
    return value
