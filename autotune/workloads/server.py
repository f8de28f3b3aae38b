"""One `vllm serve` of a trial: start, wait for /health while it lives, profile endpoints, stop."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

from autotune.errors import AutotuneError
from autotune.workloads.process import Child, log_tail, root_cause

HEALTH_POLL_S = 0.25
HOST = "127.0.0.1"


class TrialFailure(AutotuneError):
    """A trial that could not be measured; the message ends with the tail of the log it names."""


def failure(reason: str, log: Path | None) -> TrialFailure:
    """`reason` and what the log says, as one line: the root cause the log holds (the last
    exception that is not a wrapper), else its tail; the log is named by its full path."""
    if log is None:
        return TrialFailure(reason)
    cause = root_cause(log)
    if cause:
        return TrialFailure(f"{reason}: {cause} (log {log})")
    tail = log_tail(log, lines=8, width=240)
    return TrialFailure(f"{reason}; log {log}: {tail}" if tail else f"{reason}; log {log}")


# Loopback calls go straight to the server, whatever http_proxy/https_proxy say.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def loopback_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the loopback names in no_proxy/NO_PROXY: `vllm bench serve` honours the proxy
    variables (aiohttp's trust_env, vLLM benchmarks/serve.py:669-671) and would send its
    requests for 127.0.0.1 to the proxy."""
    out = dict(env)
    for key in ("no_proxy", "NO_PROXY"):
        have = [h.strip() for h in out.get(key, "").split(",") if h.strip()]
        out[key] = ",".join([*have, *(h for h in LOOPBACK if h not in have)])
    return out


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
            with _DIRECT.open(request, timeout=timeout_s) as response:
                response.read()
        except urllib.error.HTTPError as exc:
            raise failure(f"POST {path} answered HTTP {exc.code}", self.log) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise failure(f"POST {path} failed: {reason}", self.log) from None

    def _get_ok(self, path: str) -> bool:
        try:
            with _DIRECT.open(self.base_url + path, timeout=5) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def stop(self) -> None:
        """SIGTERM to the group, SIGKILL after --stop-timeout; nothing of it survives."""
        self.child.stop(self.stop_timeout_s)
