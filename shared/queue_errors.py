"""Failures of the consume side of the per-conversation queue.

    QueueError
    ├── LeaseLost        terminal for the work in hand: the lease was taken away (fenced out)
    │                    or ran out. The message stays queued for whoever holds the
    │                    conversation now; the old holder drops what it was doing.
    ├── NotHead          terminal: the message is not its conversation's head. Only a bug (or
    │                    a hand-edited Redis) gets here; acking it would break the order.
    ├── InvalidWrite     terminal, a programming error: a commit write the protocol refuses
    │                    (command not allowed, key outside the conversation's hash tag, ...).
    └── ConversationBusy retryable: a dead letter cannot be replayed while its conversation is
                         leased; try again when the holder's turn ends.

Redis being unreachable is not a QueueError: callers see redis-py's ConnectionError and
TimeoutError (retryable) and decide how long to keep trying.
"""

from __future__ import annotations


class QueueError(RuntimeError):
    """Base class of the queue protocol's failures."""


class LeaseLost(QueueError):
    """The caller's lease on the conversation is gone: drop the work, do not retry it."""


class NotHead(QueueError):
    """The message is not the head of its conversation (acking it would break the order)."""


class InvalidWrite(QueueError, ValueError):
    """A commit write the protocol refuses; nothing was written."""


class ConversationBusy(QueueError):
    """The conversation is leased right now; the operation may be retried shortly."""
