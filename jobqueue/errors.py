"""The project's own errors.

Every failure a caller can see is a ``JobQueueError``. Errors from client libraries
(psycopg, redis, confluent-kafka, the Kubernetes client) are wrapped at the edge where
they happen and chained with ``raise ... from``, so a person reads one clear message and
the driver traceback is still there for whoever debugs it.

Two families split the errors by what the caller should do next:

- ``TemporaryError``: the operation may succeed later (a server is down, a lock is
  busy); it carries a suggested ``retry_after_s``.
- ``PermanentError``: retrying the same call will fail the same way (bad input, a
  missing prerequisite, an unknown queue).
"""

from __future__ import annotations


class JobQueueError(Exception):
    """Base of every error jobqueue raises on purpose."""


class TemporaryError(JobQueueError):
    """The operation failed for a reason that may pass; try again after a delay."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s  # seconds


class PermanentError(JobQueueError):
    """The operation cannot succeed as asked; retrying it unchanged is pointless."""


class InvalidInputError(PermanentError):
    """A request, payload, manifest or setting is malformed; nothing was changed."""


class ConfigError(InvalidInputError):
    """The configuration is invalid; the message names the offending field."""


class PrerequisiteMissingError(PermanentError):
    """Something this machine must provide (a program, a package) is not there."""


class NotFoundError(PermanentError):
    """The job, queue or worker named does not exist."""


class ConflictError(PermanentError):
    """The request does not fit the current state (retrying a job that succeeded)."""


class LimitExceededError(InvalidInputError):
    """A payload, batch or output is over its size limit."""


class UnavailableError(TemporaryError):
    """A server or dependency cannot be reached right now."""


class UnauthenticatedError(PermanentError):
    """The caller did not prove who it is (no token, a bad or expired one)."""


class PermissionDeniedError(PermanentError):
    """The caller is known but not allowed to do this."""
