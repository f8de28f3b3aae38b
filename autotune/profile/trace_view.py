"""Streaming reader of `trace_view.json` (a bare JSON array of Chrome-trace events).

Only "Ascend Hardware" task events become rows; processes are recognised by their `process_name`
metadata, which may come after the events, so candidate rows are kept per pid until the end.

Speed: the text is read in chunks and split at event separators (`}, {`); only pieces that can
matter (they mention `Task Type`, `Stream Id`, `process_` or `ProfilerStep#`) are looked at, and
pieces in msprof's canonical task layout are parsed with one regex instead of `json`. Every other
piece goes through `json`.
Each shortcut is only taken where it is provably exact (see `fast_chunk`);
anything else falls back to decoding one event at a time with `json.JSONDecoder.raw_decode`.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.errors import AutotuneError
from autotune.profile.tasks import TASK_COLUMNS, Profile, empty_tasks

CHUNK_BYTES = 16 << 20
# Cap on one event's text: a longer incomplete tail means the file is not a trace.
MAX_EVENT_CHARS = 64 << 20
HARDWARE = "Ascend Hardware"
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1

# Text shapes. JSON whitespace is exactly these four characters.
_W = r"[ \t\n\r]*"
_SEP_RE = re.compile(r"\}" + _W + "," + _W + r"\{")
_NESTED_RE = re.compile(r"\[" + _W + r"\{")
_SKIP_RE = re.compile(r"[ \t\n\r,]*")
# Unrolled-loop string pattern: much faster in `re` than a per-character alternation.
_CH = r'[^"\\\x00-\x1f]*'
_STR = '"(' + _CH + r'(?:\\(?:["\\/bfnrt]|u[0-9a-fA-F]{4})' + _CH + ')*)"'
_INT = r"(-?(?:0|[1-9][0-9]*))"
_NUM = r"(-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?)"
_NUM_NC = r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?"


def _kv(key: str, value: str) -> str:
    return f'{_W}"{key}"{_W}:{_W}{value}{_W}'


# One task event exactly as msprof writes it (ascend_hardware_assembler), braces stripped. A piece
# that matches is a complete, valid JSON object with these keys only, so the groups are exact.
_CANON_RE = re.compile(
    ",".join(
        (
            _kv("name", _STR),
            _kv("pid", _INT),
            _kv("tid", _INT),
            _kv("ts", r'"([0-9]+)\.([0-9]{3})(?:\\t)?"'),
            _kv("dur", _NUM),
            _kv("ph", '"X"'),
            _W + '"args"' + _W + ":" + _W + r"\{" + _kv("Model Id", _NUM_NC),
            _kv("Task Type", _STR),
            _kv("(?:Physic )?Stream Id", _INT),
            _kv("Task Id", _NUM_NC),
            _kv("Batch Id", _NUM_NC),
            _kv("Subtask Id", _NUM_NC),
            _kv("connection_id", _INT) + r"\}" + _W,
        )
    )
)


@dataclass
class _Columns:
    """Candidate task rows of one pid (kept until we know whether the pid is Ascend Hardware)."""

    stream: list[int] = field(default_factory=list)
    name: list[str] = field(default_factory=list)
    type: list[str] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    conn: list[int] = field(default_factory=list)


@dataclass
class _Batch:
    """Canonical task rows of one chunk, as arrays (pid decides later whether they are kept)."""

    pid: npt.NDArray[np.int64]
    stream: npt.NDArray[np.int64]
    name: list[str]
    type: list[str]
    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    conn: npt.NDArray[np.int64]


def _is_int(v: object) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def us_to_ns(value: object) -> int | None:
    """A µs timestamp (decimal string, maybe with a trailing tab, or a number) as integer ns."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value * 1000
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            return None
        value = repr(value)
    if not isinstance(value, str):
        return None
    s = value.strip()
    neg = s.startswith("-")
    if neg:
        s = s[1:]
    whole, dot, frac = s.partition(".")
    if (
        not whole.isdigit()
        or not whole.isascii()
        or (dot and not (frac.isdigit() and frac.isascii()))
    ):
        # Exponent forms ("1e3") come from float repr; let Decimal-free int math handle them.
        try:
            f = float(s)
        except ValueError:
            return None
        if "e" not in s.lower() or f != f or abs(f) == float("inf"):
            return None
        return (-1 if neg else 1) * round(f * 1000)
    ns = int(whole) * 1000 + int((frac + "000")[:3])
    return -ns if neg else ns


def dur_to_ns(value: object) -> int | None:
    """A JSON-number duration in µs as integer ns (`round(dur * 1000)`)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        d = float(value) * 1000
        if d != d or abs(d) == float("inf"):
            return None
        return round(d)
    if isinstance(value, str):
        return us_to_ns(value)
    return None


class _Reader:
    """State of one streaming read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process_names: dict[int, str] = {}
        self.process_labels: dict[int, str] = {}
        self.cands: dict[int, _Columns] = {}
        self.batches: list[_Batch] = []
        self.steps: set[str] = set()
        self.events = 0
        self.bad_tasks = 0
        self.intern: dict[str, str] = {}
        self.decoder = json.JSONDecoder()

    # -- one decoded event -------------------------------------------------------------------
    def event(self, e: object) -> None:
        self.events += 1
        if not isinstance(e, dict):
            return
        ph = e.get("ph")
        if ph == "X":
            name = e.get("name")
            if isinstance(name, str) and name.startswith("ProfilerStep#"):
                self.steps.add(name)
            pid = e.get("pid")
            args = e.get("args")
            if not _is_int(pid) or not isinstance(args, dict):
                return
            if (
                "Task Type" not in args
                and "Physic Stream Id" not in args
                and "Stream Id" not in args
            ):
                return
            self._task(pid, e, args, name)
        elif ph == "M":
            pid = e.get("pid")
            args = e.get("args")
            if not _is_int(pid) or not isinstance(args, dict):
                return
            kind = e.get("name")
            if kind == "process_name" and isinstance(args.get("name"), str):
                self.process_names[pid] = args["name"]
            elif kind == "process_labels" and isinstance(args.get("labels"), str):
                self.process_labels[pid] = args["labels"]

    def _task(self, pid: int, e: dict[str, Any], args: dict[str, Any], name: object) -> None:
        start = us_to_ns(e.get("ts"))
        dur = dur_to_ns(e.get("dur", 0))
        tid = e.get("tid")
        stream = tid if _is_int(tid) else args.get("Physic Stream Id", args.get("Stream Id"))
        if (
            start is None
            or dur is None
            or not _is_int(stream)
            or not (_I64_MIN <= start <= start + dur < _I64_MAX)
            or not (_I64_MIN <= stream < _I64_MAX)
        ):
            self.bad_tasks += 1
            return
        ttype = args.get("Task Type", "")
        conn = args.get("connection_id", -1)
        cols = self.cands.get(pid)
        if cols is None:
            cols = self.cands[pid] = _Columns()
        cols.stream.append(stream)
        cols.name.append(self._s(name))
        cols.type.append(self._s(ttype))
        cols.start.append(start)
        cols.end.append(start + dur)
        cols.conn.append(conn if _is_int(conn) and _I64_MIN <= conn < _I64_MAX else -1)

    def _s(self, v: object) -> str:
        s = v if isinstance(v, str) else ("" if v is None else json.dumps(v))
        return self.intern.setdefault(s, s)

    # -- exact path: one event at a time -----------------------------------------------------
    def exact(self, text: str, pos: int, final: bool) -> int:
        """Decode events from `pos`; return where the undecoded rest starts (a `]` when final)."""
        raw_decode = self.decoder.raw_decode
        skip = _SKIP_RE.match
        n = len(text)
        while True:
            m = skip(text, pos)
            pos = m.end() if m else pos
            if pos >= n or text[pos] == "]":
                return pos
            try:
                obj, end = raw_decode(text, pos)
            except json.JSONDecodeError:
                return pos
            except RecursionError:
                raise AutotuneError(
                    f"{self.path}: nesting too deep near event {self.events}"
                ) from None
            self.event(obj)
            pos = end

    # -- fast path ---------------------------------------------------------------------------
    def fast_chunk(self, text: str, pos: int) -> int:
        """Read the complete events of `text[pos:]` quickly; return where the unread tail starts.

        Exactness: splitting at `}, {` could cut inside a string or inside a nested array of
        objects. Arrays of objects are excluded up front (no `[{` in the region). A piece that
        starts or ends inside a string never decodes as an object, so every piece we do decode (or
        match with `_CANON_RE`, which only matches whole valid objects) is a true event; the cut
        before the carried tail is placed after such a verified piece. Pieces we skip carry none of
        the markers, so whatever event they belong to carries none either and is not needed.
        """
        m = _SKIP_RE.match(text, pos)
        start = m.end() if m else pos
        if start >= len(text) or text[start] != "{":
            return self.exact(text, pos, False)
        sep_m = _SEP_RE.search(text, start)
        if sep_m is None:
            return start
        sep = sep_m.group()
        pieces = text[start + 1 :].split(sep)
        if len(pieces) < 3:
            return self.exact(text, start, False)
        # Verified cut: the last non-empty piece before the tail that decodes as one object.
        cut_idx = -1
        for k in range(len(pieces) - 2, max(len(pieces) - 50, 0), -1):
            p = pieces[k]
            if p and self._decodes(p):
                cut_idx = k
                break
        if cut_idx < 1:
            return self.exact(text, start, False)
        body = pieces[: cut_idx + 1]
        cut = start + 1 + sum(map(len, body)) + len(sep) * cut_idx + 1  # just after its '}'
        if _NESTED_RE.search(text, start, cut):
            return self.exact(text, start, False)
        marked = [
            p
            for p in body
            if "Task Type" in p or "process_" in p or "Stream Id" in p or "ProfilerStep#" in p
        ]
        if not self._take(marked):
            return self.exact(text, start, False)
        return cut

    def _decodes(self, piece: str) -> bool:
        try:
            obj = json.loads("{" + piece + "}")
        except (json.JSONDecodeError, RecursionError):
            return False
        return isinstance(obj, dict)

    def _take(self, marked: list[str]) -> bool:
        """Use the marked pieces of a chunk; False (nothing used) when one is not a valid event."""
        canon: list[tuple[str, ...]] = []
        other: list[str] = []
        match = _CANON_RE.fullmatch
        for p in marked:
            m = match(p)
            if m is None:
                other.append(p)
            else:
                canon.append(m.groups())
        decoded: list[Any] = []
        if other:
            try:
                decoded = json.loads("[{" + "},{".join(other) + "}]")
            except (json.JSONDecodeError, RecursionError):
                return False
            if len(decoded) != len(other):
                return False
        if canon:
            self._canon(canon)
        for e in decoded:
            self.event(e)
        return True

    def _canon(self, rows: list[tuple[str, ...]]) -> None:
        name, pid, tid, ts_i, ts_f, dur, ttype, _stream_arg, conn = zip(*rows, strict=True)
        n = len(rows)
        self.events += n
        try:
            if max(map(len, ts_i)) > 15 or max(map(len, conn)) > 18:
                raise OverflowError  # would not fit int64 ns; numpy would wrap silently
            pids = np.fromiter(map(int, pid), np.int64, n)
            start = np.fromiter(map(int, ts_i), np.int64, n) * 1000 + np.fromiter(
                map(int, ts_f), np.int64, n
            )
            durs = np.rint(np.fromiter(map(float, dur), np.float64, n) * 1000)
            conns = np.fromiter(map(int, conn), np.int64, n)
            streams = np.fromiter(map(int, tid), np.int64, n)
        except OverflowError:
            # Values beyond int64: take the general path, which range-checks them one by one.
            for row in rows:
                self.events -= 1
                self.event(json.loads(_canon_to_json(row)))
            return
        ok = np.isfinite(durs) & (np.abs(durs) < 2.0**62)
        if not ok.all():
            self.bad_tasks += int((~ok).sum())
            keep = np.flatnonzero(ok)
            pids, start, durs, conns, streams = (
                pids[keep],
                start[keep],
                durs[keep],
                conns[keep],
                streams[keep],
            )
            name = tuple(name[i] for i in keep)
            ttype = tuple(ttype[i] for i in keep)
        it = self.intern.setdefault
        self.batches.append(
            _Batch(
                pid=pids,
                stream=streams,
                name=[it(_unescape(s), _unescape(s)) if "\\" in s else it(s, s) for s in name],
                type=[it(_unescape(s), _unescape(s)) if "\\" in s else it(s, s) for s in ttype],
                start=start,
                end=start + durs.astype(np.int64),
                conn=conns,
            )
        )

    # -- result ------------------------------------------------------------------------------
    def hardware_pids(self) -> set[int]:
        return {pid for pid, n in self.process_names.items() if n == HARDWARE}

    def device_of(self, pid: int) -> int:
        label = self.process_labels.get(pid, "")
        m = re.fullmatch(r"\s*NPU\s*(\d+)\s*", label)
        return int(m.group(1)) if m else pid & 31

    def table(self) -> pd.DataFrame:
        hw = self.hardware_pids()
        hw_arr = np.fromiter(hw, np.int64, len(hw))
        dev_map = {pid: self.device_of(pid) for pid in hw}
        parts: list[pd.DataFrame] = []
        for b in self.batches:
            idx = np.flatnonzero(np.isin(b.pid, hw_arr))
            if not len(idx):
                continue
            parts.append(
                pd.DataFrame(
                    {
                        "device": np.array([dev_map[p] for p in b.pid[idx].tolist()], np.int64),
                        "stream": b.stream[idx],
                        "name": pd.Series([b.name[i] for i in idx], dtype=object),
                        "type": pd.Series([b.type[i] for i in idx], dtype=object),
                        "op_type": pd.Series([""] * len(idx), dtype=object),
                        "start_ns": b.start[idx],
                        "end_ns": b.end[idx],
                        "connection_id": b.conn[idx],
                    }
                )
            )
        for pid, c in self.cands.items():
            if pid not in hw or not c.start:
                continue
            parts.append(
                pd.DataFrame(
                    {
                        "device": np.full(len(c.start), self.device_of(pid), np.int64),
                        "stream": np.array(c.stream, np.int64),
                        "name": pd.Series(c.name, dtype=object),
                        "type": pd.Series(c.type, dtype=object),
                        "op_type": pd.Series([""] * len(c.start), dtype=object),
                        "start_ns": np.array(c.start, np.int64),
                        "end_ns": np.array(c.end, np.int64),
                        "connection_id": np.array(c.conn, np.int64),
                    }
                )
            )
        if not parts:
            return empty_tasks()
        df = pd.concat(parts, ignore_index=True)
        df["source"] = pd.Series(["trace_view"] * len(df), dtype=object)
        return df[list(TASK_COLUMNS)]


def _unescape(s: str) -> str:
    out = json.loads('"' + s + '"')
    return out if isinstance(out, str) else s


def _canon_to_json(row: tuple[str, ...]) -> str:
    name, pid, tid, ts_i, ts_f, dur, ttype, stream, conn = row
    return (
        f'{{"name":"{name}","pid":{pid},"tid":{tid},"ts":"{ts_i}.{ts_f}","dur":{dur},"ph":"X",'
        f'"args":{{"Task Type":"{ttype}","Stream Id":{stream},"connection_id":{conn}}}}}'
    )


def read_trace_view(path: Path) -> Profile:
    """Read one trace_view.json into an (unclassified) Profile; `path` is the file."""
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AutotuneError(f"{path}: cannot open trace ({exc.strerror or exc})") from None
    r = _Reader(path)
    warnings: list[str] = []
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    pos = 0
    opened = False
    with fh:
        while True:
            raw = fh.read(CHUNK_BYTES)
            final = not raw
            text = text[pos:] + decoder.decode(raw, final=final)
            pos = 0
            if not opened:
                head = text.lstrip(" \t\n\r\ufeff")
                if not head:
                    if final:
                        raise AutotuneError(f"{path}: empty file, expected a JSON array of events")
                    continue
                if head[0] != "[":
                    what = "a JSON object" if head[0] == "{" else "not JSON"
                    raise AutotuneError(
                        f"{path}: not a trace_view.json (expected a JSON array of events, "
                        f"found {what})"
                    )
                pos = len(text) - len(head) + 1
                opened = True
            if not final:
                pos = r.fast_chunk(text, pos)
                if len(text) - pos > MAX_EVENT_CHARS:
                    pos = r.exact(text, pos, False)
                    if len(text) - pos > MAX_EVENT_CHARS:
                        raise AutotuneError(
                            f"{path}: invalid JSON after event {r.events} (no complete event in "
                            f"{MAX_EVENT_CHARS >> 20} MiB)"
                        )
                continue
            pos = r.exact(text, pos, True)
            rest = text[pos:].strip(" \t\n\r")
            if rest.startswith("]"):
                if rest[1:].strip(" \t\n\r,"):
                    raise AutotuneError(f"{path}: unexpected data after the closing bracket")
            elif _looks_truncated(r.decoder, text, pos):
                warnings.append(
                    f"{path}: file is cut off (no closing bracket); read {r.events} events up to "
                    "the last complete one"
                )
            else:
                raise AutotuneError(f"{path}: invalid JSON after event {r.events}")
            break
    if r.bad_tasks:
        warnings.append(f"{path}: skipped {r.bad_tasks} task events with unusable ts/dur/stream")
    if not r.hardware_pids():
        raise AutotuneError(
            f"{path}: no Ascend Hardware tasks (no 'Ascend Hardware' process in the trace; "
            "was the profile taken with ProfilerActivity.NPU?)"
        )
    tasks = r.table()
    if tasks.empty:
        raise AutotuneError(f"{path}: the 'Ascend Hardware' process has no task events")
    return Profile(
        path=path,
        source="trace_view",
        tasks=tasks,
        steps=len(r.steps) if r.steps else None,
        warnings=warnings,
    )


def _looks_truncated(decoder: json.JSONDecoder, text: str, pos: int) -> bool:
    """True when `text[pos:]` is the start of a valid event cut off at end of file."""
    rest = text[pos:]
    if rest.lstrip(" \t\n\r,") == "":
        return True
    try:
        decoder.raw_decode(rest, len(rest) - len(rest.lstrip(" \t\n\r,")))
    except json.JSONDecodeError as exc:
        if exc.msg.startswith("Unterminated string") or exc.pos >= len(rest):
            return True
        # An escape sequence cut in the middle ("\\u00").
        return exc.msg.startswith("Invalid \\") and exc.pos >= len(rest) - 6
    except RecursionError:
        return False
    # A whole event followed by junk, or an event without a separator: not a clean cut.
    return False
