"""``rotator run``: the long-running daemon. Each credential's reconciler is woken by APScheduler
when the policy says something is due (or after ``poll`` seconds, to notice drift), one pass at
a time per credential (``max_instances=1``, missed runs coalesced). SIGTERM lets the pass in
progress finish its step and stops.
"""

from __future__ import annotations

import datetime as dt
import random
import signal
import threading
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler

from rotator import logs
from rotator.app import App
from rotator.errors import RotatorError

log = logs.get("rotator.daemon")


class Daemon:
    def __init__(self, app: App, *, poll: float = 30.0) -> None:
        self.app = app
        self.poll = poll
        self.stopping = threading.Event()
        self.scheduler = BackgroundScheduler(timezone=dt.UTC, job_defaults={"coalesce": True, "max_instances": 1})

    def _schedule(self, name: str, at: dt.datetime) -> None:
        if self.stopping.is_set():
            return
        self.scheduler.add_job(self.tick, "date", run_date=at, args=[name], id=name, replace_existing=True)

    def tick(self, name: str) -> None:
        now = dt.datetime.now(dt.UTC)
        next_at = now + dt.timedelta(seconds=self.poll)
        try:
            outcome = self.app.reconciler(name).run(None, wait_budget=0)
            log.debug("pass.finished", credential=name, result=outcome.result)
            if outcome.next_at is not None:
                cred = self.app.settings.credential(name)
                jitter = cred.schedule.jitter.total_seconds() * random.random()
                next_at = min(next_at, outcome.next_at + dt.timedelta(seconds=jitter))
        except RotatorError as exc:
            log.error("pass.failed", credential=name, error=str(exc))
        except Exception as exc:  # the daemon never dies of one failed pass
            log.exception("pass.crashed", credential=name, error=type(exc).__name__)
        self._schedule(name, max(next_at, dt.datetime.now(dt.UTC) + dt.timedelta(seconds=0.2)))

    def serve(self) -> int:
        def stop(signum: int, _: Any) -> None:
            log.info("daemon.stopping", signal=signal.Signals(signum).name)
            self.stopping.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        self.scheduler.start()
        now = dt.datetime.now(dt.UTC)
        for cred in self.app.settings.credentials:
            self._schedule(cred.name, now)
        log.info("daemon.started", credentials=[c.name for c in self.app.settings.credentials])
        self.stopping.wait()
        self.scheduler.shutdown(wait=True)  # the pass in progress finishes its current step
        self.app.close()
        log.info("daemon.stopped")
        return 0
