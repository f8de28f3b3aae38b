"""One `vllm serve` of a trial: start, wait for /health while it lives, profile endpoints, stop."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.workloads.process import Child, log_tail

HEALTH_POLL_S = 0.25
HOST = "127.0.0.1"


class TrialFailure(AutotuneError):
    """A trial that could not be measured; the message ends with the tail of the log it names."""


def failure(reason: str, log: Path | None) -> TrialFailure:
    """`reason`, plus the tail of `log` when it has one, as one line."""
    tail = log_tail(log, lines=8, width=240) if log is not None else ""
    return TrialFailure(f"{reason}; log {log.name}: {tail}" if tail and log else reason)


class VllmServer:
    """A started `vllm serve`, its own process group; `stop` reaps the whole group."""

    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str],
        log: Path,
        port: int,
        stop_timeout_s: float,
    ) -> None:
        self.log = log
        self.port = port
        self.stop_timeout_s = stop_timeout_s
        self.child = Child(argv, env=env, log=log)

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def alive(self) -> bool:
        return self.child.alive()

    def wait_healthy(self, timeout_s: float) -> float:
        """Seconds until GET /health answered 200; TrialFailure if the server exits or times out."""
        start = time.monotonic()
        deadline = start + timeout_s
        while True:
            code = self.child.returncode
            if code is not None:
                raise failure(f"vllm serve exited with code {code} during start-up", self.log)
            if self._get_ok("/health"):
                return time.monotonic() - start
            if time.monotonic() >= deadline:
                raise failure(
                    f"vllm serve was not healthy after {timeout_s:g} s (--startup-timeout)",
                    self.log,
                )
            time.sleep(HEALTH_POLL_S)

    def post(self, path: str, timeout_s: float) -> None:
        """POST `path`; TrialFailure naming the endpoint unless it answers 2xx."""
        request = urllib.request.Request(self.base_url + path, data=b"", method="POST")
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise failure(f"POST {path} answered HTTP {exc.code}", self.log) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise failure(f"POST {path} failed: {reason}", self.log) from None

    def _get_ok(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(self.base_url + path, timeout=5) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after --stop-timeout; nothing of it survives."""
        self.child.stop(self.stop_timeout_s)
