"""Named points where loopgate can be made to wait, so tests can kill it at an exact moment.

`LOOPGATE_PAUSE_AT=<point>` and `LOOPGATE_PAUSE_DIR=<dir>`: on reaching the point, loopgate creates
`<dir>/<point>.reached` and waits until `<dir>/<point>.go` exists. Without both variables a point costs
one environment lookup. Points: `envoy-spawned` (Envoy runs, its state not yet written),
`envoy-started`, `service-spawned` (a baseline service runs, not yet recorded), `database-created`,
`fork-spawned`, `suite-running`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path


def point(name: str) -> None:
    if os.environ.get("LOOPGATE_PAUSE_AT") != name or not os.environ.get("LOOPGATE_PAUSE_DIR"):
        return
    directory = Path(os.environ["LOOPGATE_PAUSE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.reached").write_text(str(os.getpid()))
    while not (directory / f"{name}.go").exists():
        time.sleep(0.02)
