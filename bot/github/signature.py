"""Webhook signatures: HMAC-SHA256 of the raw body with the webhook secret, compared in constant time.

Headers arrive from anyone before they are authenticated, so every comparison here is of bytes:
`hmac.compare_digest` raises on a `str` that is not ASCII, and a raise there would be a 500.
"""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def as_bytes(value: str | bytes) -> bytes:
    """Any header or query value as bytes, whatever characters it holds (lone surrogates too)."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogatepass")


def same_secret(given: str | bytes | None, expected: str | bytes | None) -> bool:
    """Constant-time equality of two secrets of any characters; False when either is missing."""
    if not given or not expected:
        return False
    return hmac.compare_digest(as_bytes(given), as_bytes(expected))


def verify_signature(body: bytes, secret: str, header: str | bytes | None) -> bool:
    """True only for a `sha256=<hex>` header that matches; never raises."""
    if not header or not secret:
        return False
    return same_secret(as_bytes(header).strip(), sign(body, secret))
