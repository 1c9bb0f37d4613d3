"""Structured log lines for the daemon: one line per event on stderr, as logfmt
(``time=... level=info event=... k=v``), so journald and log shippers parse them as-is."""
from __future__ import annotations

import json
import sys
import time
from typing import Any


def _logfmt_value(v: Any) -> str:
    s = str(v) if not isinstance(v, bool) else str(v).lower()
    if s == "" or any(c in s for c in ' "=\\') or not s.isprintable():
        return json.dumps(s)
    return s


class Log:
    """One line per event on stderr: time=... level=... event=... key=value ..."""

    def __init__(self, stream=None):
        self.stream = stream

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        t = time.time()
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"
        parts = [f"time={stamp}", f"level={level}", f"event={event}"]
        parts += [f"{k}={_logfmt_value(v)}" for k, v in fields.items() if v is not None]
        stream = self.stream or sys.stderr
        print(" ".join(parts), file=stream, flush=True)


class Notes(Log):
    """For a foreground front end (`xdplb run`): stdout is the user's, and stderr gets one
    `xdplb: ...` line per warning or error; routine events stay quiet."""

    def __call__(self, event: str, level: str = "info", **fields: Any) -> None:
        if level == "info":
            return
        what = fields.pop("what", None) or fields.pop("error", None)
        rest = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items() if v is not None)
        text = event.replace("_", " ") + (f": {what}" if what else "") + \
            (f" ({rest})" if rest else "")
        print(f"xdplb: {text}", file=self.stream or sys.stderr, flush=True)
