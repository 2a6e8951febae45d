"""The two error families of docs/architecture.md §6. Only `TransientError` is ever retried."""

from __future__ import annotations


class DeployError(Exception):
    """A failure the pusher must act on: bad config, template error, failed check.

    `where` names the file (and line, field or object) at fault; the message is one line.
    """

    def __init__(self, message: str, *, where: str | None = None, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = " ".join(message.split())
        self.where = where
        self.details = details  # context shown under the one line, e.g. the last lines of a failed build

    def __str__(self) -> str:
        return f"{self.where}: {self.message}" if self.where else self.message


class RolledBack(DeployError):
    """A release whose canary was rolled back (recorded `rolled-back`): the outcome, not a fault in the input."""


class TransientError(Exception):
    """A failure that may pass on its own (5xx, timeouts, conflicts): retried with backoff."""
