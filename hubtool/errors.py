"""One error type for everything a user can get wrong.

The CLI prints ``str(err)`` on one line and exits non-zero; a traceback only with ``--debug``.
Messages name the file or field and say what was expected.
"""

from typing import Any


def shown(value: Any, limit: int = 80) -> str:
    """repr(value) cut to `limit` characters, for error messages: a 100 kB field from a hostile file
    must not become a 100 kB error line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class HubError(Exception):
    """A user-facing error: bad input, missing expert, corrupt file, wrong base model."""

    exit_code = 1


class FormatError(HubError):
    """A packed expert file is malformed (header, version, shapes, indices, dtype, values)."""


class FingerprintError(HubError):
    """An expert was trained against a different base weight than the one it is applied to."""


class NotFoundError(HubError):
    """No expert, alias, task or blob of that name."""
