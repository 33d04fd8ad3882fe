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
from collections.abc import Callable
from pathlib import Path


def point(name: str, should_stop: Callable[[], bool] | None = None) -> None:
    """Wait at `name` when asked to; `should_stop` ends the wait early (a run stopping on another
    thread must not leave this one waiting for a go that never comes)."""
    if os.environ.get("LOOPGATE_PAUSE_AT") != name or not os.environ.get("LOOPGATE_PAUSE_DIR"):
        return
    directory = Path(os.environ["LOOPGATE_PAUSE_DIR"])
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.reached").write_text(str(os.getpid()))
    while not (directory / f"{name}.go").exists():
        if should_stop is not None and should_stop():
            return
        time.sleep(0.02)
