"""The image's HEALTHCHECK: exit 0 when the server's Open Inference Protocol readiness answers 200.

Standard library only (the image has no curl). It asks the address the server binds
(SEEDSERVE_HOST, with a wildcard meaning loopback) on SEEDSERVE_PORT.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

READY_PATH = "/v2/health/ready"
WILDCARDS = {"", "0.0.0.0", "::", "[::]"}


def readiness_url() -> str:
    host = os.environ.get("SEEDSERVE_HOST", "127.0.0.1")
    port = os.environ.get("SEEDSERVE_PORT", "8000")
    if host in WILDCARDS:
        host = "127.0.0.1"
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"  # an IPv6 literal
    return f"http://{host}:{port}{READY_PATH}"


def main() -> int:
    url = readiness_url()
    try:
        with urllib.request.urlopen(url, timeout=2.5) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
