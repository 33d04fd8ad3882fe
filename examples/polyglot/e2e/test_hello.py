"""The system from its entry: a name from `names`, greeted by `greeter`, through `front`."""

from __future__ import annotations

import json
import os
from urllib.request import Request, urlopen


def hello(seed: int) -> dict[str, str]:
    baggage = os.environ.get("BAGGAGE")  # empty when the suite runs against the baseline
    headers = {"baggage": baggage} if baggage else {}
    request = Request(f"{os.environ['FRONT_URL']}/hello?seed={seed}", headers=headers)
    with urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def test_front_greets_a_name_from_names() -> None:
    answer = hello(1)
    assert answer["name"] == "Grace"
    assert answer["greeting"] == "Hello, Grace!"


def test_every_seed_gets_a_greeting() -> None:
    for seed in range(3):
        answer = hello(seed)
        assert answer["greeting"].endswith(f", {answer['name']}!")
