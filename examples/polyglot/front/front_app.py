"""front: FastAPI. `GET /hello?seed=N` picks a name from `names` and has `greeter` greet it.

It reads the list of names once at start, so it cannot start before `names` answers; it has no health
endpoint. Both neighbours' URLs come from its environment; the `baggage` header of each request is
passed on, so a request tagged for a sandbox reaches that sandbox's forks at every hop.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.request import Request, urlopen

from fastapi import FastAPI, Header

NAMES_URL = os.environ["NAMES_URL"]
GREETER_URL = os.environ["GREETER_URL"]


def get(url: str, baggage: str | None) -> dict[str, object]:
    request = Request(url, headers={"baggage": baggage} if baggage else {})
    with urlopen(request, timeout=5) as response:
        return json.loads(response.read())


@asynccontextmanager
async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
    known = get(f"{NAMES_URL}/names", None)["names"]
    print(f"front: {len(known)} names known")
    yield


app = FastAPI(lifespan=lifespan)


@app.get("/hello")
def hello(seed: int = 0, baggage: str | None = Header(default=None)) -> dict[str, object]:
    name = get(f"{NAMES_URL}/pick?seed={seed}", baggage)["name"]
    text = get(f"{GREETER_URL}/greet?name={name}", baggage)["text"]
    return {"name": name, "greeting": text}
