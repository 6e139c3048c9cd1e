"""The baseline of the ingest benchmarks: a functions-framework HTTP function that does only what any
Pub/Sub push handler must (parse the push body, base64-decode the message data, parse the call) and
acks with 204. It writes nothing. GET answers how many pushes it acked, so the benchmark can tell when
the Pub/Sub emulator's pushes have all arrived (a counter under a lock: negligible next to the rest).
`?hold_ms=N` holds each request N ms before answering (a sleep, no CPU): what the framework costs any
handler whose answers take as long as ours' (ours waits for its rows' write)."""

from __future__ import annotations

import base64
import json
import threading
import time
from typing import Any

import functions_framework

_lock = threading.Lock()
_acked = 0


@functions_framework.http
def bare(request: Any) -> tuple[str, int]:
    global _acked
    if request.method == "GET":
        with _lock:
            return str(_acked), 200
    push = json.loads(request.get_data(cache=False))
    json.loads(base64.b64decode(push["message"]["data"]))
    if request.query_string:
        time.sleep(float(request.args.get("hold_ms", 0)) / 1000)
    with _lock:
        _acked += 1
    return "", 204
