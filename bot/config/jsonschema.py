"""`python -m bot.config.jsonschema > docs/config.schema.json`: the published schema of `.loopgate.yml`,
for editors and for agents that write the file."""

from __future__ import annotations

import json
from typing import Any

from bot.config.schema import Config


def config_schema() -> dict[str, Any]:
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = ".loopgate.yml"
    return schema


if __name__ == "__main__":
    print(json.dumps(config_schema(), indent=2, sort_keys=True))
