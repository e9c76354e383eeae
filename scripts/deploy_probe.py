"""Probes of a running deployment, for scripts/deploy_check.sh (standard library only).

  deploy_probe.py classify SEEDSERVE_URL    classify a drawn digit with the first ready classifier
  deploy_probe.py traffic SEEDSERVE_URL     a few good and bad requests, so every metric has data
  deploy_probe.py scraped PROMETHEUS_URL    wait until Prometheus scraped seedserve (up == 1 and a
                                            seedserve_ metric present)

Addresses must be loopback: the deployment under test listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zlib
from collections.abc import Callable
from typing import Any

TIMEOUT_S = 10.0


def seven_png(size: int = 28) -> bytes:
    """A white-on-black 7 as an 8-bit greyscale PNG: a bar on top, a diagonal stroke down."""
    rows = []
    for y in range(size):
        row = bytearray(size)
        for x in range(size):
            bar = 5 <= y <= 7 and 7 <= x <= 21
            stroke = 7 <= y <= 23 and abs(x - (21 - (y - 7) * 10 // 16)) <= 1
            row[x] = 255 if bar or stroke else 0
        rows.append(b"\x00" + bytes(row))  # filter type 0 per scanline

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows)))
        + chunk(b"IEND", b"")
    )


def request(
    url: str, data: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON body or None) of one request; HTTP errors are answers, not raises."""
    assert urllib.parse.urlsplit(url).hostname in {"127.0.0.1", "localhost", "::1"}, url
    req = urllib.request.Request(url, data=data, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT_S) as response:
            status, body = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read()
    try:
        return status, json.loads(body) if body else None
    except ValueError:
        return status, None


def post_picture(url: str, picture: bytes) -> tuple[int, Any]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="seven.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + picture
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})


# The shipped digit classifier: when it is there, the drawn 7 must come back as "7".
DIGITS = "cnn-mnist"


def first_classifier(base: str) -> str:
    """The digit classifier if it is ready, else the first ready classification model."""
    status, listing = request(f"{base}/v1/models")
    assert status == 200, f"GET /v1/models: {status} {listing}"
    names = [
        m["id"] for m in listing["data"] if m.get("ready") and m.get("task") == "classification"
    ]
    assert names, f"no ready classification model in {listing}"
    return DIGITS if DIGITS in names else str(names[0])


def classify(base: str) -> None:
    model = first_classifier(base)
    status, answer = post_picture(f"{base}/v1/models/{model}/classify?top_k=3", seven_png())
    assert status == 200, f"classify with {model}: {status} {answer}"
    top = answer["predictions"][0]
    assert len(top) == 3 and all(0.0 <= p["probability"] <= 1.0 for p in top), answer
    assert model != DIGITS or top[0]["label"] == "7", f"{model} did not read the drawn 7: {top}"
    print(f"classify {model}: " + ", ".join(f"{p['label']} {p['probability']:.3f}" for p in top))


def traffic(base: str, good: int = 20) -> None:
    model = first_classifier(base)
    for _ in range(good):
        status, answer = post_picture(f"{base}/v1/models/{model}/classify", seven_png())
        assert status == 200, f"{status} {answer}"
    status, _ = post_picture(f"{base}/v1/models/{model}/classify", b"not a picture")
    assert 400 <= status < 500, f"a broken picture should be refused with 4xx, got {status}"
    status, _ = request(f"{base}/v1/models/no-such-model")
    assert status == 404, status
    print(f"traffic: {good} classifications of {model}, one bad picture, one unknown model")


def query(prometheus: str, promql: str) -> list[dict[str, Any]]:
    url = f"{prometheus}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    status, answer = request(url)
    assert status == 200 and answer["status"] == "success", f"{promql}: {status} {answer}"
    return list(answer["data"]["result"])


def scraped(prometheus: str, timeout_s: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_s
    up: list[dict[str, Any]] = []
    series: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        try:
            up = query(prometheus, 'up{job="seedserve"}')
            series = query(prometheus, 'count by (__name__) ({__name__=~"seedserve_.+"})')
        except (OSError, AssertionError):
            up, series = [], []
        names = {s["metric"]["__name__"] for s in series}
        if up and up[0]["value"][1] == "1" and "seedserve_http_requests_total" in names:
            print(f"prometheus scraped seedserve: up == 1, {len(names)} seedserve_ metrics")
            return
        time.sleep(2)
    raise SystemExit(f"prometheus did not scrape seedserve in {timeout_s:.0f} s: up={up}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("probe", choices=["classify", "traffic", "scraped"])
    parser.add_argument(
        "url", help="http://127.0.0.1:PORT of seedserve, or of Prometheus for scraped"
    )
    args = parser.parse_args()
    probes: dict[str, Callable[[str], None]] = {
        "classify": classify,
        "traffic": traffic,
        "scraped": scraped,
    }
    try:
        probes[args.probe](args.url.rstrip("/"))
    except AssertionError as error:
        sys.exit(f"{args.probe}: {error}")


if __name__ == "__main__":
    main()
