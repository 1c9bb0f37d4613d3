"""Exceptions of the public API."""


class XdplbError(Exception):
    """A failure to report as one line (`xdplb: <message>`), exit status 1."""


class UsageError(XdplbError):
    """Bad command-line input, exit status 2."""
