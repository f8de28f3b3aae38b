"""`autotune run --storage postgresql://…` against a real PostgreSQL server started for this module.

The server runs from a throw-away data directory on a free loopback port (unix socket in the same
directory). Without the PostgreSQL binaries or psycopg2 the module is skipped, but under CI (the
variable CI set) that is a failure: .ci/run installs both.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn

import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner

from autotune.cli import app

runner = CliRunner()
RUN = ["run", "--model", "Qwen3-32B-W8A8", "--max-num-seqs", "72", "--backend", "simulate"]
DB_USER = "autotune"
DB_NAME = "autotune_test"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


def _missing(reason: str) -> NoReturn:
    """Skip locally; under CI a missing server or driver is an error, not a skip."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: .ci/run must install it)", pytrace=False)
    pytest.skip(reason)


def _psycopg2() -> None:
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        _missing("psycopg2 is not installed: pip install -e '.[postgres]'")


def _server_bin_dir() -> Path | None:
    """The directory holding initdb, pg_ctl and postgres: PATH first, then Debian's layout."""
    found = shutil.which("initdb")
    candidates = [Path(found).resolve().parent] if found else []
    candidates += [
        Path(d)
        for d in sorted(
            glob.glob("/usr/lib/postgresql/*/bin"),
            key=lambda d: int(Path(d).parent.name) if Path(d).parent.name.isdigit() else 0,
            reverse=True,
        )
    ]
    for d in candidates:
        if all((d / exe).is_file() for exe in ("initdb", "pg_ctl", "postgres")):
            return d
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(cmd: list[str], *, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run `cmd` in its own process group; on timeout kill the whole group; always reap it."""
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _connect(port: int, dbname: str) -> Any:
    import psycopg2

    return psycopg2.connect(
        host="127.0.0.1", port=port, user=DB_USER, dbname=dbname, connect_timeout=2
    )


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database on loopback; the server is stopped and reaped afterwards."""
    _psycopg2()
    bin_dir = _server_bin_dir()
    if bin_dir is None:
        _missing("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found")
    # PostgreSQL refuses to run as root: then its files and processes belong to another user.
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        for name in ("postgres", "nobody"):
            with contextlib.suppress(KeyError):
                entry = pwd.getpwnam(name)
                as_user = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
                break
        else:
            _missing("running as root and no 'postgres' or 'nobody' user to run PostgreSQL as")
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="autotune-pg-"))
    server: subprocess.Popen[bytes] | None = None
    data = root / "data"
    log = root / "server.log"
    try:
        if as_user:
            os.chown(root, as_user["user"], as_user["group"])
        env = {**os.environ, "LC_ALL": "C", "LANG": "C", "TZ": "UTC"}
        done = _run(
            [str(bin_dir / "initdb"), "-D", str(data), "-U", DB_USER, "-A", "trust",
             "-E", "UTF8", "--no-locale", "--no-sync"],
            timeout=120, cwd=root, env=env, **as_user,
        )  # fmt: skip
        assert done.returncode == 0, f"initdb failed:\n{done.stdout}{done.stderr}"
        for attempt in range(3):
            port = _free_port()
            with log.open("ab") as log_file:
                server = subprocess.Popen(
                    [str(bin_dir / "postgres"), "-D", str(data), "-p", str(port),
                     "-k", str(root), "-c", "listen_addresses=127.0.0.1",
                     "-c", "fsync=off", "-c", "full_page_writes=off",
                     "-c", "synchronous_commit=off"],
                    stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                    cwd=root, env=env, start_new_session=True, **as_user,
                )  # fmt: skip
            if _wait_ready(server, port):
                break
            _stop(server, bin_dir, data, as_user, env)
            server = None
            if attempt == 2:
                pytest.fail(f"PostgreSQL did not start:\n{log.read_text(errors='replace')}")
        conn = _connect(port, "postgres")
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute(f"CREATE DATABASE {DB_NAME}")
        finally:
            conn.close()
        print(f"PostgreSQL ready in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield f"postgresql+psycopg2://{DB_USER}@127.0.0.1:{port}/{DB_NAME}"
    finally:
        if server is not None:
            _stop(server, bin_dir, data, as_user, env)
        shutil.rmtree(root, ignore_errors=True)


def _wait_ready(server: subprocess.Popen[bytes], port: int) -> bool:
    """True once the server accepts connections; False if it exited or did not come up."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.poll() is not None:
            return False
        try:
            _connect(port, "postgres").close()
            return True
        except Exception:
            time.sleep(0.1)
    return False


def _stop(
    server: subprocess.Popen[bytes],
    bin_dir: Path,
    data: Path,
    as_user: dict[str, Any],
    env: dict[str, str],
) -> None:
    """pg_ctl stop -m fast; if the server is still there, kill its process group; reap it."""
    if server.poll() is None:
        with contextlib.suppress(Exception):
            _run(
                [str(bin_dir / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w",
                 "-t", str(int(STOP_TIMEOUT_S))],
                timeout=STOP_TIMEOUT_S + 10, cwd=data.parent, env=env, **as_user,
            )  # fmt: skip
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(timeout=STOP_TIMEOUT_S)
    # The server's own children (backends, checkpointer, …) share its process group.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait()


@pytest.fixture(scope="module")
def first_run(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, str, dict[int, dict[str, float]]]:
    """Five trials of study s1 in PostgreSQL: the run dir, the URL and each trial's params."""
    out = tmp_path_factory.mktemp("pg") / "r1"
    args = [*RUN, "--trials", "5", "--storage", pg_url, "--study-name", "s1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s1", storage=pg_url)
    done = study.get_trials(states=(TrialState.COMPLETE,))
    return out, pg_url, {t.number: dict(t.params) for t in done}


def test_run_keeps_its_study_in_postgres(
    first_run: tuple[Path, str, dict[int, dict[str, float]]],
) -> None:
    out, url, params = first_run
    assert sorted(params) == [0, 1, 2, 3, 4]
    study = optuna.load_study(study_name="s1", storage=url)
    roles = [t.user_attrs.get("role") for t in study.get_trials()[:3]]
    assert roles == ["baseline", "default", "seed"]
    assert not (out / "study.db").exists()
    assert (out / "summary.json").is_file()


def test_resume_continues_the_same_study(
    first_run: tuple[Path, str, dict[int, dict[str, float]]],
) -> None:
    out, url, before = first_run
    args = [*RUN, "--trials", "7", "--storage", url, "--study-name", "s1", "--out", str(out)]
    result = runner.invoke(app, [*args, "--resume", "--json"])
    assert result.exit_code == 0, result.output
    study = optuna.load_study(study_name="s1", storage=url)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    measured = [t for t in complete if t.user_attrs.get("duplicate_of") is None]
    assert len(measured) == 7
    after = {t.number: dict(t.params) for t in complete}
    # The five finished trials are still there, unchanged, and none of them ran again.
    assert {n: after[n] for n in before} == before
    points = [tuple(sorted(t.params.items())) for t in measured]
    assert len(points) == len(set(points)), "a finished trial ran again"
    assert not (out / "study.db").exists()


def test_busy_out_dir_leaves_no_study_behind(pg_url: str, tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    args = [*RUN, "--trials", "2", "--storage", pg_url, "--study-name", "s2"]
    result = runner.invoke(app, [*args, "--out", str(busy)])
    assert result.exit_code == 2, result.output
    assert "--out" in result.output and "Traceback" not in result.output
    assert "s2" not in {s.study_name for s in optuna.get_all_study_summaries(pg_url)}
    # The name is still free for the run that follows with an empty --out.
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "fresh"), "--json"])
    assert result.exit_code == 0, result.output


def test_unreachable_postgres_is_one_clean_line(tmp_path: Path) -> None:
    _psycopg2()
    out = tmp_path / "out"
    url = f"postgresql+psycopg2://{DB_USER}:s3cret-pw@127.0.0.1:{_free_port()}/{DB_NAME}"
    cmd = [sys.executable, "-m", "autotune", *RUN, "--trials", "3", "--storage", url,
           "--study-name", "s9", "--out", str(out)]  # fmt: skip
    done = _run(cmd, timeout=120)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stdout == ""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Traceback" not in done.stderr
    assert lines[0].startswith("error: ") and "--storage" in lines[0], lines[0]
    assert "s3cret-pw" not in done.stderr  # the message shows the URL without its password
    assert not out.exists()
