"""The JSON log lines, and the access log's direct path: the same line as `logging` writes, taken
only when the service's own handler is the one place the record would go."""

from __future__ import annotations

import io
import json
import logging
import os
import re
from collections.abc import Iterator

import pytest

from service.logs import AccessLog, JsonHandler, configure_logging
from service.middleware import request_id_from

FIELDS = {"request_id": "r1", "method": "POST", "path": "/v2/models/m/infer", "status": 200}
TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture
def root_stream() -> Iterator[io.StringIO]:
    """The root logger as configure_logging sets it up, writing to a string."""
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging("info")
    stream = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, JsonHandler)
    handler.setStream(stream)
    try:
        yield stream
    finally:
        root.handlers[:], _ = saved
        root.setLevel(saved[1])


def alone() -> None:
    """Only the service's handler on the root (pytest adds its capture handlers for each test
    phase, after the fixtures are set up; it removes them itself)."""
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if type(h) is JsonHandler]


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_the_direct_line_is_the_line_logging_writes(
    root_stream: io.StringIO, monkeypatch: pytest.MonkeyPatch
) -> None:
    alone()
    access = AccessLog("seedserve.test-access")
    assert isinstance(access._only_handler(), JsonHandler)
    access.write({**FIELDS, "duration_ms": 1.5})
    direct = root_stream.getvalue()
    root_stream.seek(0)
    root_stream.truncate()
    monkeypatch.setattr(access, "_only_handler", lambda: None)  # through logging instead
    access.write({**FIELDS, "duration_ms": 1.5})
    through_logging = root_stream.getvalue()
    assert direct.endswith("\n") and through_logging.endswith("\n")
    a, b = json.loads(direct), json.loads(through_logging)
    assert TIME.fullmatch(str(a.pop("time"))) and TIME.fullmatch(str(b.pop("time")))
    assert list(a.items()) == list(b.items())  # same fields, same order
    assert a == {"level": "info", "logger": "seedserve.test-access", "message": "request"} | {
        **FIELDS,
        "duration_ms": 1.5,
    }


def test_anything_else_listening_gets_the_record_through_logging(
    root_stream: io.StringIO,
) -> None:
    alone()
    access = AccessLog("seedserve.test-access")
    own = io.StringIO()
    handler = logging.StreamHandler(own)
    access.logger.addHandler(handler)
    try:
        assert access._only_handler() is None
        access.write(dict(FIELDS))
    finally:
        access.logger.removeHandler(handler)
    assert own.getvalue().strip() == "request"  # the plain handler's own format
    assert [line["request_id"] for line in lines(root_stream)] == ["r1"]  # and it propagated


@pytest.mark.parametrize("change", ["level", "filter", "propagate", "second handler", "disabled"])
def test_the_direct_path_steps_aside(root_stream: io.StringIO, change: str) -> None:
    alone()
    access = AccessLog("seedserve.test-access")
    root = logging.getLogger()
    extra = logging.StreamHandler(io.StringIO())
    undo = {
        "level": lambda: root.setLevel(logging.INFO),
        "filter": lambda: access.logger.removeFilter(drop_all),
        "propagate": lambda: setattr(access.logger, "propagate", True),
        "second handler": lambda: root.removeHandler(extra),
        "disabled": lambda: setattr(access.logger, "disabled", False),
    }

    def drop_all(record: logging.LogRecord) -> bool:
        return False

    {
        "level": lambda: root.setLevel(logging.WARNING),
        "filter": lambda: access.logger.addFilter(drop_all),
        "propagate": lambda: setattr(access.logger, "propagate", False),
        "second handler": lambda: root.addHandler(extra),
        "disabled": lambda: setattr(access.logger, "disabled", True),
    }[change]()
    try:
        assert access._only_handler() is None
        access.write(dict(FIELDS))
    finally:
        undo[change]()
    written = lines(root_stream)
    if change == "second handler":
        assert [line["request_id"] for line in written] == ["r1"]  # both handlers got it
        assert extra.stream.getvalue().strip() == "request"
    else:
        assert written == []  # logging's rules kept it from the root's handler


def test_the_time_is_the_records_time(root_stream: io.StringIO) -> None:
    record = logging.makeLogRecord({"created": 1_800_000_000.25, "msecs": 250.0, "msg": "m"})
    handler = logging.getLogger().handlers[0]
    assert json.loads(handler.format(record))["time"] == "2027-01-15T08:00:00.250Z"


def test_fresh_request_ids_are_128_random_bits_and_a_forked_worker_draws_its_own() -> None:
    ids = {request_id_from(None) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in ids)
    assert request_id_from("client-given-7") == "client-given-7"
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # a worker forked after the parent drew ids: its generator is reseeded
        os.write(writer, request_id_from(None).encode())
        os._exit(0)
    os.close(writer)
    os.waitpid(child, 0)
    in_child = os.read(reader, 64).decode()
    os.close(reader)
    assert re.fullmatch(r"[0-9a-f]{32}", in_child)
    assert in_child != request_id_from(None)
