"""Child processes in their own process group: start, watch, stop (TERM, then KILL), reap."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

from autotune.errors import AutotuneError

# How often a wait loop looks at the child.
POLL_S = 0.05


class Child:
    """One started command, leader of its own session (pid == pgid); its output goes to a log."""

    def __init__(
        self, argv: Sequence[str], *, env: Mapping[str, str], log: Path, cwd: Path | None = None
    ) -> None:
        self.argv = list(argv)
        self.log = log
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("ab") as out:
            try:
                # Never a shell string; a new session so the whole tree can be signalled at once
                # and a Ctrl-C on the terminal reaches autotune only.
                self.proc = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(env),
                    cwd=cwd,
                    start_new_session=True,
                )
            except OSError as exc:
                raise AutotuneError(f"cannot start {self.argv[0]}: {exc.strerror or exc}") from None
        self.pgid = self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def wait(self, timeout_s: float) -> int | None:
        """The exit code, or None if still running after `timeout_s`."""
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace_s: float) -> None:
        """SIGTERM to the group, SIGKILL after `grace_s`, then reap; safe to call twice.

        A Ctrl-C that arrives meanwhile is held back until the group is gone, so a second Ctrl-C
        cannot leave a server behind.
        """
        with _sigint_held():
            self._stop(grace_s)

    def _stop(self, grace_s: float) -> None:
        if self.group_alive():
            self._signal(signal.SIGTERM)
            deadline = time.monotonic() + grace_s
            while time.monotonic() < deadline and self.group_alive():
                self._reap_nowait()
                time.sleep(POLL_S)
            if self.group_alive():
                self._signal(signal.SIGKILL)
        # The leader is our child: wait for it, so it leaves no zombie.
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=max(grace_s, 5.0))
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline and self.group_alive():
            self._signal(signal.SIGKILL)
            time.sleep(POLL_S)

    def group_alive(self) -> bool:
        """True while any process of the group exists (a zombie leader does not count)."""
        self._reap_nowait()
        if self.proc.returncode is None:
            return True
        try:
            os.killpg(self.pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        # Orphaned members that already exited linger as zombies until init reaps them (seconds
        # on some hosts); they hold no memory or ports, so only live members keep the group alive.
        return _has_live_member(self.pgid)

    def _reap_nowait(self) -> None:
        self.proc.poll()

    def _signal(self, sig: signal.Signals) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, sig)


def _has_live_member(pgid: int) -> bool:
    """True when a process of group `pgid` is not a zombie (True when /proc cannot tell)."""
    proc = Path("/proc")
    if not (proc / "self" / "stat").is_file():
        return True
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            stat = (Path(entry.path) / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # Fields after the command name, which is in parentheses and may hold spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            return True
    return False


@contextlib.contextmanager
def _sigint_held() -> Iterator[None]:
    """Defer SIGINT (main thread only) and raise KeyboardInterrupt afterwards if one came."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


# A Python exception line, maybe behind a log prefix: "… ValueError: message".
_EXCEPTION = re.compile(r"\b((?:[A-Za-z_]\w*\.)*[A-Z]\w*(?:Error|Exception))(?::\s*(.*))?$")
# Exceptions that only point elsewhere ("… See root cause above", "… see stack trace").
_WRAPPER = re.compile(r"root cause|stack trace|initialization failed|failed to start", re.I)
# How much of a log's end to search for the root cause.
ROOT_CAUSE_BYTES = 512 * 1024


def root_cause(path: Path, width: int = 400) -> str:
    """The last exception in a log that is not a wrapper pointing elsewhere, with up to two
    indented lines that continue its message; "" when the log holds none.

    A failing `vllm serve` ends with wrappers ("RuntimeError: Engine core initialization
    failed. See root cause above."); the cause is the exception a worker raised before them.
    """
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - ROOT_CAUSE_BYTES))
            lines = handle.read().decode("utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    for i in range(len(lines) - 1, -1, -1):
        match = _EXCEPTION.search(lines[i])
        if match is None or _WRAPPER.search(lines[i]):
            continue
        # Continuation lines carry the same log prefix ("(APIServer pid=1) "), then indentation.
        prefix = lines[i][: match.start()]
        text = lines[i][match.start() :].strip()
        for more in lines[i + 1 : i + 3]:
            rest = more[len(prefix) :] if more.startswith(prefix) else ""
            if not rest[:1].isspace() or rest.strip().startswith("File "):
                break
            text += " " + rest.strip()
        return text[:width]
    return ""


def log_tail(path: Path, lines: int = 15, width: int = 400) -> str:
    """The last `lines` non-empty lines of a log, joined with " | " so they fit in one line."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 16384))
            text = handle.read().decode("utf-8", errors="replace")
    except OSError:
        return ""
    kept = [line.strip()[:width] for line in text.splitlines() if line.strip()]
    return " | ".join(kept[-lines:])


def run_captured(
    argv: Sequence[str], *, env: Mapping[str, str], stdin: str = "", timeout_s: float
) -> tuple[int | None, str, str]:
    """(exit code, stdout, stderr) of a short command in its own process group; the code is
    None when it outlived `timeout_s`, and the whole group is killed then (or on Ctrl-C)."""
    try:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=dict(env),
            text=True,
            start_new_session=True,
        )
    except OSError as exc:
        raise AutotuneError(f"cannot start {argv[0]}: {exc.strerror or exc}") from None
    try:
        out, err = proc.communicate(stdin, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return None, out, err
    except BaseException:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    return proc.returncode, out, err


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """True when something already listens on host:port (a connect succeeds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0
