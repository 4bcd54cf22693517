"""Container health probe: GET /health on this process's health port; exit 0 only on 200.

Run by the image's HEALTHCHECK and by compose; needs nothing beyond the standard library."""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping

__all__ = ["health_url", "main"]

PORT_ENV = "TRADEWIND__HEALTH__HEALTH_PORT"
DEFAULT_PORT = "8080"
TIMEOUT_S = 4.0  # under the HEALTHCHECK --timeout, so a hung server reads as unhealthy


def health_url(environ: Mapping[str, str]) -> str:
    """The /health URL of the process in this container."""
    return f"http://127.0.0.1:{environ.get(PORT_ENV) or DEFAULT_PORT}/health"


def main() -> int:
    """Probe once; the reasons of a 503 go to stderr, where `docker inspect` shows them."""
    url = health_url(os.environ)
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"unhealthy ({exc.code}): {exc.read(2000).decode(errors='replace')}", file=sys.stderr)
    except (urllib.error.URLError, OSError) as exc:
        print(f"no answer from {url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
