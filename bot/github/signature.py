"""Webhook signatures: HMAC-SHA256 of the raw body with the webhook secret, compared in constant time."""

from __future__ import annotations

import hashlib
import hmac

PREFIX = "sha256="


def sign(body: bytes, secret: str) -> str:
    return PREFIX + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_signature(body: bytes, secret: str, header: str | None) -> bool:
    """True only for a well-formed `sha256=<hex>` header that matches; never raises."""
    if not header or not header.startswith(PREFIX) or not secret:
        return False
    return hmac.compare_digest(sign(body, secret), header.strip())
