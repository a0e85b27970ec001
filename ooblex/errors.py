"""One error hierarchy: every error Ooblex raises on purpose is an ``OoblexError``.

Each class carries the HTTP status it means where one applies, so the gateway answers every
route from one table (``status``) instead of a list of exception types per module. The classes
also derive from the builtin a Python caller would expect (``ValueError``, ``LookupError``,
``PermissionError``), so ``except ValueError`` keeps working in user code.
"""

from __future__ import annotations


class OoblexError(Exception):
    """Base class. ``status``: the HTTP status a gateway answers with (500 if none applies)."""

    status: int = 500

    def __str__(self) -> str:  # KeyError subclasses would otherwise print the message in quotes
        return str(self.args[0]) if self.args else self.__class__.__name__


class BadRequest(OoblexError, ValueError):
    """The request or argument is malformed or out of range."""

    status = 400


class Unauthorized(OoblexError, PermissionError):
    """No valid credentials: a token is missing, malformed, expired or signed with another secret."""

    status = 401


class Forbidden(OoblexError, PermissionError):
    """Valid credentials (or none needed) but this is not allowed: wrong scope, foreign origin, outside a root."""

    status = 403


class NotFound(OoblexError, LookupError):
    """No such thread, stream, session, job or file."""

    status = 404


class MethodNotAllowed(OoblexError):
    """The resource exists but does not take this method."""

    status = 405


class Conflict(OoblexError, ValueError):
    """The request collides with existing state (a sink file that exists, say)."""

    status = 409


class PayloadTooLarge(OoblexError, ValueError):
    """A body, message, image or upload is over its configured limit."""

    status = 413


class UnsupportedMediaType(OoblexError, ValueError):
    """The body's Content-Type is not one this endpoint takes."""

    status = 415


class TooManyRequests(OoblexError, OverflowError):
    """A configured limit on concurrent work is reached (sessions, streams, jobs, per client).

    Also an ``OverflowError``: what ``Engine.open`` raised for its stream limit before this class existed.
    """

    status = 429


class Unavailable(OoblexError):
    """A dependency (cluster, workers, gateway) cannot be reached now; retrying later may work."""

    status = 503


class GatewayTimeout(OoblexError, TimeoutError):
    """The workers did not answer in time."""

    status = 504


def status(exc: BaseException) -> int:
    """The HTTP status for ``exc``: its own for an ``OoblexError``, 400 for another ``ValueError`` (an
    argument check in plain Python code), 500 for anything else (a bug)."""
    if isinstance(exc, OoblexError):
        return exc.status
    return 400 if isinstance(exc, ValueError) else 500
