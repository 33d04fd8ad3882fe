"""A baseline warm-up, start to finish: mirror, the default branch's config, `up_baseline`, retire.

Why: a run's baseline is its slowest stage when it starts cold (the services' own start-up, a seed).
The default branch's head is the base of the next agent run, so once it moves an idle worker starts
that baseline and leaves it running; the next run on that base finds it `ready` and reuses it
("reused a running baseline"). The config comes from the default branch's new head, the trusted
config (DESIGN "Trust"), and runs under the same runtime and confinement as a run's baseline.

A warm-up never reports to GitHub: it has no check and no verdict. Its outcome is stored with a
one-line cause (`failed`: a config that cannot be read, a service that cannot start; `skipped`: no
`.loopgate.yml`). The runtime's `up_baseline` stops what a failed start left behind.

Old baselines: `retire_stale_baselines` stops this process's baselines of the repository at other
commits that no live sandbox uses. A run between `up_baseline` and its sandbox has none yet, so the
warm-up retires only while no run of the repository is running; otherwise the run's own retiring,
when it ends, does it (`bot.worker.executor`, against the base branch's head at that moment).
"""

from __future__ import annotations

import logging
import threading
import time

from bot.config import CONFIG_FILE, LoopgateError
from bot.config.loader import MAX_CONFIG_BYTES
from bot.github.events import printable
from bot.pipeline.choice import only
from bot.pipeline.plan import load_base_config
from bot.runtimes.git import Git
from bot.runtimes.protocol import Source
from bot.store.snapshots import RunStatus, WarmupSnapshot, WarmupStatus
from bot.worker.executor import RunEnvironment

log = logging.getLogger("loopgate.worker")


class WarmUp:
    def __init__(self, env: RunEnvironment) -> None:
        self.env = env

    def execute(self, warmup: WarmupSnapshot) -> None:
        """Warm it with a heartbeat all along, and record the outcome (only while this worker
        still holds it: a reaper that concluded it meanwhile has the last word)."""
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeat, args=(warmup, stop), daemon=True)
        beat.start()
        try:
            status, detail, warmed = self._outcome(warmup)
        finally:
            stop.set()
            beat.join(timeout=1)
        log.info("warm-up of %s: %s (%s)", warmup.repo, status.value, detail)
        self.env.store.finish_warmup(
            warmup.id, status, detail, warmed_sha=warmed, claimed_by=warmup.claimed_by
        )

    def _outcome(self, warmup: WarmupSnapshot) -> tuple[WarmupStatus, str, str | None]:
        try:
            return self._warm(warmup)
        except LoopgateError as exc:
            return WarmupStatus.FAILED, _one_line(str(exc)), None
        except Exception as exc:  # a bug or an unforeseen failure: recorded, the worker goes on
            log.exception("warm-up of %s failed", warmup.repo)
            return WarmupStatus.FAILED, _one_line(f"internal error: {type(exc).__name__}: {exc}"), None

    def _warm(self, warmup: WarmupSnapshot) -> tuple[WarmupStatus, str, str | None]:
        env = self.env
        client = env.github.repo(warmup.repo, warmup.installation_id)
        mirror = env.mirrors.sync(warmup.repo, warmup.clone_url, client.token(warmup.installation_id or 0))
        git = Git(mirror)
        # The branch head now, not the pushed commit: pushes may arrive out of order, and a warm-up
        # that waited stands for every push of the branch since it was queued.
        head = git.resolve(f"refs/heads/{warmup.branch}")
        if git.show_bytes(head, CONFIG_FILE, MAX_CONFIG_BYTES) is None:
            return WarmupStatus.SKIPPED, f"no {CONFIG_FILE} at {head[:12]}", head
        config = load_base_config(git, head, None).config
        runtime = only(env.runtime)(config)
        started = time.monotonic()
        baseline = runtime.up_baseline(Source(mirror, head), config)
        took = f"{(time.monotonic() - started) * 1000:.0f} ms"
        detail = (
            f"reused a running baseline of {head[:12]}"
            if baseline.reused
            else f"started {head[:12]} in {took}"
        )
        running = [
            r for r in env.store.in_flight() if r.repo == warmup.repo and r.status == RunStatus.RUNNING
        ]
        if running:
            detail += "; older baselines are left to the running runs to retire"
        else:
            retired = runtime.retire_stale_baselines(Source(mirror, head))
            if retired:
                detail += f"; retired {len(retired)} older"
        return WarmupStatus.READY, detail, head

    def _heartbeat(self, warmup: WarmupSnapshot, stop: threading.Event) -> None:
        worker = warmup.claimed_by or ""
        while not stop.wait(self.env.settings.heartbeat_s):
            try:
                if not self.env.store.warmup_heartbeat(warmup.id, worker):
                    return
            except Exception:  # the database may be briefly away; a missed beat is not fatal
                log.exception("heartbeat of warm-up %s failed", warmup.id)


def _one_line(text: str) -> str:
    first = text.strip().splitlines()[0] if text.strip() else "unknown failure"
    return printable(first, 500)
