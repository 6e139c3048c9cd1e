"""Structured log lines Cloud Logging understands: one JSON object per line on stderr (stdout stays free
for command output), with `severity` and `message`; the other keys become jsonPayload fields. No
payload contents at INFO. Ingest writes one line per push request (app: message id, delivery_attempt,
subscription, status, outcome, tables written, counts), which is all a request whose calls were written
whole gets; each rejected call and each call that lost values to discards gets its own WARNING line
(ingest: reasons, or table and discard count). A `stack_trace` field is what Error Reporting groups
errors by."""

from __future__ import annotations

import json
import sys
from typing import Any, TextIO


def log(severity: str, message: str, stream: TextIO | None = None, **fields: Any) -> None:
    entry = {"severity": severity, "message": message, **{k: v for k, v in fields.items() if v is not None}}
    out = stream or sys.stderr
    out.write(json.dumps(entry, default=str, separators=(",", ":")) + "\n")
    out.flush()
