"""Who may use the service and how much: its token, which hosts need one, and the live channel's rate limit."""

from __future__ import annotations

import ipaddress
import threading
import time
from typing import Optional




MIN_TOKEN_LENGTH = 8
TOKEN_COOKIE = "fex_token"


def check_token(token: str) -> None:
    """A token must be at least 8 printable ASCII characters without spaces (it travels in a header, a query
    string and a cookie); ValueError otherwise."""
    if not isinstance(token, str) or len(token) < MIN_TOKEN_LENGTH:
        raise ValueError(f"the token must be at least {MIN_TOKEN_LENGTH} characters long")
    if not all(33 <= ord(c) <= 126 for c in token) or any(c in token for c in ';,"\\'):
        raise ValueError("the token may hold printable ASCII characters only: no spaces, quotes, commas, "
                         "semicolons or backslashes")


def is_loopback(host: str) -> bool:
    """Whether ``host`` is reachable from this machine only (127.0.0.0/8, ::1, localhost)."""
    host = (host or "").strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, token: Optional[str], no_auth: bool = False) -> None:
    """Refuse to listen on a non-loopback address without a token, unless ``no_auth`` says so explicitly."""
    if token and no_auth:
        raise ValueError("--no-auth and a token (--token or FEX_TOKEN) contradict each other: give one of them")
    if token or no_auth or is_loopback(host):
        return
    raise ValueError(f"--host {host} is not a loopback address: anyone who reaches it could use the service. "
                     "Give a token (--token T or the FEX_TOKEN environment variable), or --no-auth to serve "
                     "without one")


class RateLimiter:
    """Per-client token buckets: ``rate`` requests a second, bursts of up to ``burst`` (default: one second's)."""

    def __init__(self, rate: float, burst: Optional[float] = None, max_clients: int = 4096) -> None:
        self.rate = float(rate)
        self.burst = max(1.0, float(burst if burst is not None else rate))
        self.max_clients = int(max_clients)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait_s(self, key: str, now: Optional[float] = None) -> float:
        """0.0 when the request may go (and it is counted), else the seconds until it could."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - last) * self.rate)
            if len(self._buckets) >= self.max_clients and key not in self._buckets:
                full = now - self.burst / self.rate  # clients whose bucket has refilled are as good as new
                self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}
            if tokens >= 1.0:
                self._buckets[key] = (tokens - 1.0, now)
                return 0.0
            self._buckets[key] = (tokens, now)
            return (1.0 - tokens) / self.rate
