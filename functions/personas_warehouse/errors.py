"""The one list of error classes, and the rule that sorts them.

Input errors are permanent: the message (or the one call of a batch) is recorded in the
rejected_messages table and acked, because redelivering it would fail the same way forever.
Everything else (BigQuery 5xx/429, timeouts, lost connections, a column BigQuery does not see yet,
even a misconfigured permission) is transient: the function raises, Pub/Sub redelivers with backoff,
and after the subscription's max delivery attempts the message lands in the dead-letter topic.
So no accepted message is lost and no bad message loops forever.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class ErrorClass(StrEnum):
    BAD_BASE64 = "bad_base64"  # message data is not base64
    OVERSIZED = "oversized"  # data over MAX_MESSAGE_BYTES
    INVALID_JSON = "invalid_json"  # not UTF-8 JSON (NaN/Infinity included)
    INVALID_ENVELOPE = "invalid_envelope"  # neither a call object nor {"batch": [calls]}, or no data at all
    INVALID_PUSH = "invalid_push"  # the HTTP body is not a Pub/Sub push body (not JSON, no message, ...)
    SCHEMA_VIOLATION = "schema_violation"  # marshmallow refused the call (unknown type, missing ids, ...)
    UNSAFE_SPACE = "unsafe_space"  # the space is not a safe dataset slug
    SPACE_REFUSED = "space_refused"  # the space policy refuses the space (not listed, or too many spaces)
    ROW_REFUSED = "row_refused"  # BigQuery refused the row itself (not the request)


class DiscardReason(StrEnum):
    TYPE_CONFLICT = "type_conflict"  # value cannot be converted losslessly into the column's type
    NAME_COLLISION = "name_collision"  # another key of the same call took the column name
    COLUMN_LIMIT = "column_limit"  # the table reached MAX_COLUMNS_PER_TABLE


@dataclass(frozen=True)
class Rejection:
    """A permanent input error: recorded in rejected_messages, then the message is acked."""

    error_class: ErrorClass
    errors: dict[str, list[str]] = field(default_factory=dict)
    call_index: int | None = None
    space: str | None = None


class TransientError(Exception):
    """Retry later: raised out of the function so that Pub/Sub redelivers."""


class GroupWriteFailed(Exception):
    """The shared write carrying this request's rows failed with an error that is not transient (a bug or
    a refused request): raised in every request of the group, chained to the writer's exception
    (group_commit.py)."""


class RequestRefused(Exception):
    """BigQuery refused a request we should never have made (a bug, not the rows' fault): raised as is, never
    retried inside the deadline; Pub/Sub redelivers and, if it keeps failing, dead-letters the message."""
