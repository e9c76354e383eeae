"""Structured JSON logs: one object per line, with the request id where there is one and the
trace and span ids while a traced span is current (service/tracing.py).

The access log (one line per request, `seedserve.access`) is the only record every request
writes, and through `logging` it cost more of the event loop than the rest of the middleware
(a LogRecord, a walk over its attributes, the handler's formatting: 22 us of a V2 request's
157 at concurrency 32, measured in docs/benchmarks.md). `AccessLog` writes the same line
straight to the service's own handler when nothing else would see the record (no handler,
filter or level on the way that could), and through `logging` otherwise.
"""

from __future__ import annotations

import logging
import time
from typing import Any, TextIO

import orjson

from service.tracing import log_ids

STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class _Clock:
    """`created` (time.time()) as the lines show it, the date and time part made once a second."""

    second = -1
    text = ""

    def stamp(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self.second = second
        return f"{self.text}.{int((created - second) * 1000):03d}Z"


_clock = _Clock()


def json_line(entry: dict[str, Any], exception: str | None = None) -> str:
    """One log line's JSON (without its newline): the trace ids added while a span is current,
    then the exception's traceback when there is one."""
    if (ids := log_ids()) is not None:
        entry.update(ids)
    if exception is not None:
        entry["exception"] = exception
    return orjson.dumps(entry, default=str).decode()


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": _clock.stamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in STANDARD})
        exception = self.formatException(record.exc_info) if record.exc_info else None
        return json_line(entry, exception)


class JsonHandler(logging.StreamHandler[TextIO]):
    """The service's handler (configure_logging): JSON lines on a stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None) -> None:
        super().__init__(stream)
        self.setFormatter(JsonFormatter())


class AccessLog:
    """The `request` lines of one logger (see the module docstring)."""

    def __init__(self, name: str = "seedserve.access") -> None:
        self.logger = logging.getLogger(name)

    def write(self, fields: dict[str, Any]) -> None:
        handler = self._only_handler()
        if handler is None:
            self.logger.info("request", extra=fields)
            return
        entry = {
            "time": _clock.stamp(time.time()),
            "level": "info",
            "logger": self.logger.name,
            "message": "request",
            **fields,
        }
        line = json_line(entry) + handler.terminator
        handler.acquire()
        try:
            handler.stream.write(line)
            handler.stream.flush()
        finally:
            handler.release()

    def _only_handler(self) -> JsonHandler | None:
        """The service's own handler when it is the one place an INFO record of this logger
        goes and nothing on the way filters it; else None (then `logging` decides)."""
        logger = self.logger
        if not logger.isEnabledFor(logging.INFO):
            return None
        while logger.parent is not None:  # up to the root, where the service's handler is
            if logger.filters or logger.disabled or logger.handlers or not logger.propagate:
                return None
            logger = logger.parent
        if logger.filters or len(logger.handlers) != 1:
            return None
        handler = logger.handlers[0]
        if (
            type(handler) is not JsonHandler
            or handler.filters
            or handler.level > logging.INFO
            or type(handler.formatter) is not JsonFormatter
        ):
            return None
        return handler


def configure_logging(level: str) -> None:
    # what the JSON lines never show is not gathered for every record (the logging HOWTO's
    # "Optimization"): the caller's file and line (a walk up the stack), thread and process
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    root = logging.getLogger()
    root.handlers[:] = [JsonHandler()]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request
