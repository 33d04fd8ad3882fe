"""Print the Evidence's JSON Schema: `python -m bot.report.schema > docs/evidence.schema.json`.

The schema is the contract agents code against; a test keeps the published file equal to this output.
"""

from __future__ import annotations

import json
import sys

from bot.evidence import Evidence


def evidence_schema() -> str:
    return json.dumps(Evidence.model_json_schema(mode="serialization"), indent=2) + "\n"


def main() -> None:
    sys.stdout.write(evidence_schema())


if __name__ == "__main__":
    main()
