"""Errors raised by the sans-IO codecs. Each names what was wrong with the input, never the input itself."""


class WireError(Exception):
    """Malformed, oversized or truncated input from an upstream."""


class FrameTooLarge(WireError):
    """A single frame/event grew past the codec's configured maximum; memory stays bounded."""


class TruncatedStream(WireError):
    """The input ended in the middle of a frame."""


class CorruptFrame(WireError):
    """The input is not valid for the format (bad length, bad checksum, bad syntax)."""
