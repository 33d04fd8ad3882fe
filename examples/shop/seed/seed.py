"""Seed a new baseline with realistic orders: three checkouts through the gateway, each read back.

loopgate runs this once against every new baseline (`verify.seed` in .loopgate.yml), untagged and with
the base commit's code, so every fork copies orders that were written before the change under test.
It needs LOOPGATE_GATEWAY_URL; it prints one `seeded <order id>` line per order and exits non-zero with
a one-line cause on any unexpected answer.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import httpx

GOOD_CARD = "4242-4242-4242-4242"
ORDERS = (("sku-tea-towel", 1), ("sku-notebook", 2), ("sku-tea-towel", 3))
TIMEOUT_S = 4.0


def fail(cause: str) -> NoReturn:
    print(f"seed: {cause}", file=sys.stderr)
    raise SystemExit(1)


def main() -> None:
    base_url = os.environ.get("LOOPGATE_GATEWAY_URL", "").rstrip("/")
    if not base_url:
        fail("LOOPGATE_GATEWAY_URL is not set")
    with httpx.Client(base_url=base_url, timeout=TIMEOUT_S) as gateway:
        for sku, qty in ORDERS:
            try:
                placed = gateway.post("/api/checkout", json={"sku": sku, "qty": qty, "card": GOOD_CARD})
                if placed.status_code != 201:
                    fail(f"checkout of {qty} x {sku} answered {placed.status_code}: {placed.text[:200]}")
                order = placed.json()
                read = gateway.get(f"/api/orders/{order['id']}")
                if read.status_code != 200:
                    fail(f"order {order['id']} read back {read.status_code}: {read.text[:200]}")
                if (read.json().get("sku"), read.json().get("qty")) != (sku, qty):
                    fail(f"order {order['id']} read back as {read.text[:200]}")
            except httpx.HTTPError as exc:
                fail(f"{type(exc).__name__} talking to the gateway at {base_url}: {exc}")
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                fail(f"unexpected body from the gateway: {exc!r}")
            print(f"seeded {order['id']}", flush=True)


if __name__ == "__main__":
    main()
