"""The one error the Xet parsers raise: a bad xorb or shard body, in one line (hub serve answers 400)."""

from hubtool.errors import HubError


class XetFormatError(HubError):
    """A xorb or shard is malformed, too large, or does not hash to what it claims."""
