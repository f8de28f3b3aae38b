"""Streaming reader of `trace_view.json` (a bare JSON array of Chrome-trace events).

Only "Ascend Hardware" task events become rows; processes are recognised by their `process_name`
metadata, which may come after the events, so candidate rows are kept per pid until the end.

Speed: the text is read in chunks. Each chunk is first tried whole (`_Reader.bulk`): one compiled
regex finds every task event in msprof's layout and captures its fields as columns, which numpy
converts in bulk; cheap counts and a bracket-depth check over the text between the matches prove
that the matches are exactly the chunk's task events. A chunk that fails a check is split at event
separators (`}, {`) and only the pieces that can matter are looked at (`_Reader.fast_chunk`);
anything else falls back to decoding one event at a time with `json.JSONDecoder.raw_decode`.

A large file is split into byte ranges read at once by worker processes, each returning columns;
the split is checked to fall between events, else the file is read in one pass (see "parallel
read" below). Rows are kept in file order on every path, so the table does not depend on chunking.
"""

from __future__ import annotations

import codecs
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, TypeGuard

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.errors import AutotuneError
from autotune.profile import _parallel
from autotune.profile.tasks import TASK_COLUMNS, Profile, StepSpan, empty_tasks

CHUNK_BYTES = 4 << 20
# Smallest part of a file read by its own process (see `read_trace_view`): each process adds the
# ~70 MB of interpreter and libraries it inherits to the read's resident memory, and its start-up
# time, so parts are kept large. Files under twice this are read in one process.
PART_MIN_BYTES = 64 << 20
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
    """Task rows from decoded events, waiting to join `_Reader.batches` in file order."""

    pid: list[int] = field(default_factory=list)
    stream: list[int] = field(default_factory=list)
    name: list[int] = field(default_factory=list)
    type: list[int] = field(default_factory=list)
    start: list[int] = field(default_factory=list)
    end: list[int] = field(default_factory=list)
    conn: list[int] = field(default_factory=list)


def _bulk_re(sep: str, colon: str) -> re.Pattern[str]:
    """`_CANON_RE` for a whole chunk: one task event, braces included, in one fixed spacing.

    Captures name; pid, tid and ts (without a tab) in one group, keys between; dur; task type;
    connection_id.
    It starts with a literal so the search skips fast. Strings and integers are captured loosely
    (`"[^"]*"`, `-?[0-9]+`) and checked in bulk afterwards (`_Reader.bulk`); the other values are
    exact JSON, so a checked match is a valid JSON object.
    """

    def kv(key: str, value: str) -> str:
        return f'"{key}"{colon}{value}'

    s = '"([^"]*)"'
    i = "(-?[0-9]+)"
    n = "-?(?:0|[1-9][0-9]*)"
    return re.compile(
        r"\{"
        + sep.join(
            (
                kv("name", s),
                kv("pid", "(-?[0-9]+")
                + sep
                + kv("tid", "-?[0-9]+")
                + sep
                + kv("ts", r'"[0-9]+\.[0-9]{3})(?:\\t)?"'),
                kv("dur", _NUM),
                kv("ph", '"X"'),
                kv("args", r"\{" + kv("Model Id", n)),
                kv("Task Type", s),
                kv("(?:Physic )?Stream Id", n),
                kv("Task Id", n),
                kv("Batch Id", n),
                kv("Subtask Id", n),
                kv("connection_id", i) + r"\}\}",
            )
        )
    )


_BULK_SPACED = _bulk_re(", ", ": ")  # json.dumps' default separators (torch_npu)
_BULK_COMPACT = _bulk_re(",", ":")  # msprof's own writer
_BULK_GROUPS = 5
# An integer capture that is not a JSON integer (leading zero), in ','-joined captures.
_BAD_INT_RE = re.compile(r",-?0[0-9]")
# Bytes kept for the depth check of the text between matches: quotes, braces, the gap separator.
_NOT_STRUCT = bytes(c for c in range(256) if c not in b'"{}\x00')
_CONTROL = bytes(range(32))


# Codes and distinct values of a column of strings (pandas.factorize).
_Factorized = tuple[npt.NDArray[np.intp], npt.NDArray[np.object_]]


@dataclass
class _Batch:
    """Canonical task rows of one chunk, as arrays (pid decides later whether they are kept).

    `name` and `type` are codes into `_Reader.strings`."""

    pid: npt.NDArray[Any]  # int64, or object when a pid does not fit
    stream: npt.NDArray[np.int64]
    name: npt.NDArray[np.int64]
    type: npt.NDArray[np.int64]
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
        if "e" not in s.lower() or f != f or abs(f * 1000) == float("inf"):
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


def _categorical(codes: npt.NDArray[np.int64], strings: npt.NDArray[Any]) -> pd.Categorical:
    """Codes into `strings` as a Categorical of the used strings in sorted order.

    Canonical categories make the table the same whatever order the strings were met in.
    """
    used = np.flatnonzero(np.bincount(codes, minlength=len(strings)))
    order = used[np.argsort(strings[used].astype(str), kind="stable")]
    remap = np.full(len(strings), -1, np.int64)
    remap[order] = np.arange(len(order))
    cats = pd.Index(strings[order], dtype=object)
    return pd.Categorical.from_codes(remap[codes], categories=cats)


class _Reader:
    """State of one streaming read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.process_names: dict[int, str] = {}
        self.process_labels: dict[int, str] = {}
        self.pending = _Columns()
        self.batches: list[_Batch] = []
        # Step markers: name -> (start_ns, end_ns) of its span, None when it has no usable times.
        self.steps: dict[str, tuple[int, int] | None] = {}
        self.events = 0
        self.bad_tasks = 0
        self.strings: list[str] = []  # the names and types of `batches`, by code
        self.string_codes: dict[str, int] = {}
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
                self._step(name, e)
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

    def _step(self, name: str, e: dict[str, Any]) -> None:
        """Record a `ProfilerStep#N` span; the same marker seen twice keeps the widest span."""
        start = us_to_ns(e.get("ts"))
        dur = dur_to_ns(e.get("dur", 0))
        span = None if start is None or dur is None or dur < 0 else (start, start + dur)
        _add_step(self.steps, name, span)

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
        cols = self.pending
        cols.pid.append(pid)
        cols.stream.append(stream)
        cols.name.append(self._code(self._s(name)))
        cols.type.append(self._code(self._s(ttype)))
        cols.start.append(start)
        cols.end.append(start + dur)
        cols.conn.append(conn if _is_int(conn) and _I64_MIN <= conn < _I64_MAX else -1)

    @staticmethod
    def _s(v: object) -> str:
        return v if isinstance(v, str) else ("" if v is None else json.dumps(v))

    def _flush(self) -> None:
        """Move the pending decoded rows into `batches`, so that batches stay in file order (the
        table is then the same however the file was chunked or split)."""
        c = self.pending
        if not c.pid:
            return
        self.pending = _Columns()
        try:
            pid: npt.NDArray[Any] = np.array(c.pid, np.int64)
        except OverflowError:
            pid = np.array(c.pid, dtype=object)  # pids beyond int64 stay Python ints
        self.batches.append(
            _Batch(
                pid=pid,
                stream=np.array(c.stream, np.int64),
                name=np.array(c.name, np.int64),
                type=np.array(c.type, np.int64),
                start=np.array(c.start, np.int64),
                end=np.array(c.end, np.int64),
                conn=np.array(c.conn, np.int64),
            )
        )

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

    # -- whole-chunk path -------------------------------------------------------------------
    def bulk(self, text: str, pos: int) -> int | None:
        """Read the complete events of `text[pos:]` with one regex scan; return where the unread
        tail starts, or None (nothing used) when the chunk is not provably simple.

        `pos` is between two top-level events (outside any string or object). The region read is
        `text[pos:cut]`, `cut` just after the `}` of the last `}, {` separator of the chunk. The
        regex splits the region into matches (task events in msprof's layout) and gaps (the text
        between them). The matches are exactly the region's task events because:
        - every backslash in the region starts a `\\t` escape, so no quote is escaped and no key is
          spelled with escapes; the captures are then checked to be valid JSON values, so each
          match is a valid JSON object with exactly the canonical keys;
        - in the gaps, tracking string state by quotes and depth by braces, every gap starts and
          ends outside strings at depth 0: each match starts at top level, so it is a whole
          top-level event, and so does `cut`;
        - `"Task Type"` and `Stream Id"` occur once per match and not in the gaps, and every
          event the exact path would take as a task has one of these keys (spelled literally,
          as there are no escapes), so no task event lies in a gap.
        Gaps that mention `process_` or `ProfilerStep#` are decoded with `json` and go through
        `event`; other gaps carry no metadata, step marker or task, and are skipped.
        """
        k = text.rfind("}")
        cut = -1
        for _ in range(64):
            if k < pos:
                break
            if _SEP_RE.match(text, k):
                cut = k + 1
                break
            k = text.rfind("}", pos, k)
        if cut <= pos:
            return None
        region = text[pos:cut]
        if "\\" in region and region.count("\\") != region.count("\\t"):
            return None
        first = region.find('"Task Type"')
        if first >= 0:
            spaced = region.startswith(": ", first + len('"Task Type"'))
            pieces = (_BULK_SPACED if spaced else _BULK_COMPACT).split(region)
            del region
            stride = _BULK_GROUPS + 1
            gaps = pieces[::stride]
            name, pid_tid_ts, dur, ttype, conn = (pieces[g::stride] for g in range(1, stride))
            del pieces
            tid_key, ts_key = (', "tid": ', ', "ts": "') if spaced else (',"tid":', ',"ts":"')
            nums = ",".join(pid_tid_ts).replace(tid_key, ",").replace(ts_key, ",")
            del pid_tid_ts
            names, types = _factorize(name), _factorize(ttype)
            del name, ttype
            if not _valid_captures(names[1], types[1], nums, conn):
                return None
        else:
            gaps, names = [region], None
            del region
        # The gaps joined; "\x00" marks where a match was (a NUL in a gap only adds a check).
        joined = "\x00".join(gaps)
        if '"Task Type"' in joined or 'Stream Id"' in joined:
            return None
        n_gap_events = _gap_events(joined)
        if n_gap_events is None:
            return None
        decoded: list[Any] = []
        marked: dict[int, list[int]] = {}  # gap -> where markers are in it
        ends: npt.NDArray[np.int64] | None = None
        for marker in ("process_", "ProfilerStep#"):
            at = joined.find(marker)
            while at >= 0:
                if ends is None:
                    ends = np.cumsum(np.fromiter(map(len, gaps), np.int64, len(gaps)) + 1)
                g = int(np.searchsorted(ends, at, side="right"))
                marked.setdefault(g, []).append(at - (int(ends[g - 1]) if g else 0))
                at = joined.find(marker, at + 1)
        for g in sorted(marked):
            events = _marked_events(gaps[g], sorted(marked[g]))
            if events is None:
                return None
            decoded.extend(events)
        if names is not None:
            self._canon(names, types, nums, dur, conn)
        self.events += n_gap_events - len(decoded)
        for e in decoded:
            self.event(e)
        return cut

    # -- piece path --------------------------------------------------------------------------
    def fast_chunk(self, text: str, pos: int) -> int:
        """Read the complete events of `text[pos:]` quickly; return where the unread tail starts.

        Exactness: splitting at `}, {` could cut inside a string or inside a nested array of
        objects. Arrays of objects are excluded up front (no `[{` in the region). A piece that
        starts or ends inside a string never decodes as an object, so every piece we do decode (or
        match with `_CANON_RE`, which only matches whole valid objects) is a true event; the cut
        before the carried tail is placed after such a verified piece. Pieces we skip carry none of
        the markers (nor a `\\u` escape, which could spell one), so whatever event they belong to
        carries none either and is not needed.
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
            if "Task Type" in p
            or "process_" in p
            or "Stream Id" in p
            or "ProfilerStep#" in p
            or "\\u" in p
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
        before: list[int] = []  # per other piece: canonical pieces before it
        match = _CANON_RE.fullmatch
        for p in marked:
            m = match(p)
            if m is None:
                other.append(p)
                before.append(len(canon))
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
        # Rows in file order: canonical rows are taken in runs, cut where a decoded event may add
        # a row.
        done = 0
        for k, e in zip(before, decoded, strict=True):
            if k > done and isinstance(e, dict) and e.get("ph") == "X":
                self._canon_rows(canon[done:k])
                done = k
            self.event(e)
        if done < len(canon):
            self._canon_rows(canon[done:])
        return True

    def _canon_rows(self, canon: list[tuple[str, ...]]) -> None:
        """Rows from `_CANON_RE` matches."""
        name, pid, tid, ts_i, ts_f, dur, ttype, _stream, conn = (
            list(c) for c in zip(*canon, strict=True)
        )
        nums = ",".join(f"{p},{t},{a}.{b}" for p, t, a, b in zip(pid, tid, ts_i, ts_f, strict=True))
        self._canon(_factorize(name), _factorize(ttype), nums, dur, conn)

    def _canon(
        self, name: _Factorized, ttype: _Factorized, nums: str, dur: list[str], conn: list[str]
    ) -> None:
        """Rows from canonical-layout captures: string bodies of name and task type (factorised),
        JSON numbers of dur and connection_id, and `nums`, "pid,tid,ts" for every row joined by
        commas (ts as "<us>.<3 digits>"); the integers are checked JSON integers."""
        n = len(dur)
        self.events += n
        try:
            # The exact path also rejects stream and connection_id equal to the int64 maximum.
            pid_tid_ts = _ints(nums.replace(".", ""), 3 * n).reshape(n, 3)  # ts: µs -> ns
            pids, streams, start = pid_tid_ts.T
            durs = np.rint(np.fromiter(map(float, dur), np.float64, n) * 1000)
            conns = _ints(",".join(conn), n)
        except OverflowError:
            # Values beyond int64: take the general path, which range-checks them one by one.
            self.events -= n
            vals = nums.split(",")
            cols = (
                name[1][name[0]],
                vals[0::3],
                vals[1::3],
                vals[2::3],
                dur,
                ttype[1][ttype[0]],
                conn,
            )
            for row in zip(*cols, strict=True):
                self.event(json.loads(_canon_to_json(row)))
            return
        name_codes = self._codes(name, names=True)
        type_codes = self._codes(ttype)
        # The exact path's checks: dur finite and >= 0, start + dur < int64 max (start >= 0).
        # Below 2**63 a float64 converts to int64 exactly; the sum is then compared in int64.
        ok = np.isfinite(durs) & (durs >= 0) & (durs < 2.0**63)
        ok[ok] = durs[ok].astype(np.int64) < _I64_MAX - start[ok]
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
            name_codes, type_codes = name_codes[keep], type_codes[keep]
        self._flush()
        self.batches.append(
            _Batch(
                pid=pids,
                stream=streams,
                name=name_codes,
                type=type_codes,
                start=start,
                end=start + durs.astype(np.int64),
                conn=conns,
            )
        )

    def _codes(self, values: _Factorized, names: bool = False) -> npt.NDArray[np.int64]:
        """Codes into `self.strings` of captured JSON string bodies (unescaped). For task names,
        also count step markers as `event` does."""
        codes, uniques = values
        strs = [_unescape(u) if "\\" in u else u for u in uniques]
        if names:
            for s in strs:
                if s.startswith("ProfilerStep#"):
                    _add_step(self.steps, s, None)
        lut = np.fromiter(map(self._code, strs), np.int64, len(strs))
        return lut[codes] if len(codes) else np.zeros(0, np.int64)

    def _code(self, s: str) -> int:
        code = self.string_codes.get(s)
        if code is None:
            code = self.string_codes[s] = len(self.strings)
            self.strings.append(s)
        return code

    # -- result ------------------------------------------------------------------------------
    def merge(self, part: _Part) -> None:
        """Append the next range's rows and tables (ranges are merged in file order)."""
        self._flush()
        lut = np.fromiter(map(self._code, part.strings), np.int64, len(part.strings))
        for b in part.batches:
            b.name, b.type = lut[b.name], lut[b.type]
            self.batches.append(b)
        # Later metadata wins, as in one sequential pass.
        self.process_names.update(part.process_names)
        self.process_labels.update(part.process_labels)
        for name, span in part.steps.items():
            _add_step(self.steps, name, span)
        self.events += part.events
        self.bad_tasks += part.bad_tasks

    def hardware_pids(self) -> set[int]:
        return {pid for pid, n in self.process_names.items() if n == HARDWARE}

    def device_of(self, pid: int) -> int:
        label = self.process_labels.get(pid, "")
        m = re.fullmatch(r"\s*NPU\s*(\d+)\s*", label)
        return int(m.group(1)) if m else pid & 31

    def table(self) -> pd.DataFrame:
        self._flush()
        hw = self.hardware_pids()
        if not self.batches or not hw:
            return empty_tasks()
        try:
            hw_arr: npt.NDArray[Any] = np.fromiter(hw, np.int64, len(hw))
        except OverflowError:
            hw_arr = np.array(list(hw), dtype=object)
        pid = np.concatenate([b.pid for b in self.batches])
        keep = pid == hw_arr[0] if len(hw_arr) == 1 else np.isin(pid, hw_arr)
        n = int(np.count_nonzero(keep))
        if not n:
            return empty_tasks()
        # Usually every row is kept: then no copy through an index. Temporaries are dropped as
        # soon as possible, as this is the peak of the read's memory.
        sel = None if n == len(pid) else np.flatnonzero(keep)
        del keep

        def col(name: str) -> npt.NDArray[Any]:
            a = np.concatenate([getattr(b, name) for b in self.batches])
            return a if sel is None else a[sel]

        if len(hw) == 1:
            device = np.full(n, self.device_of(next(iter(hw))), np.int64)
        else:
            inverse, pids = pd.factorize(pid if sel is None else pid[sel])
            devs = np.fromiter((self.device_of(int(p)) for p in pids.tolist()), np.int64)
            device = devs[inverse]
        del pid
        strings = np.empty(len(self.strings), dtype=object)
        strings[:] = self.strings
        data: dict[str, pd.Series] = {}
        for c in TASK_COLUMNS:
            if c == "op_type" or c == "source":
                # fill() repeats one str object; np.full would make one per row.
                values = np.empty(n, dtype=object)
                values.fill("" if c == "op_type" else "trace_view")
            elif c == "device":
                values = device
            elif c == "name" or c == "type":
                # Already interned: hand the codes over as a Categorical, so later grouping by
                # name (classify) needs no string hashing.
                data[c] = pd.Series(_categorical(col(c), strings), copy=False)
                continue
            else:
                values = col(_BATCH_FIELD[c])
            data[c] = pd.Series(values, dtype=values.dtype, copy=False)
        return pd.DataFrame(data, copy=False)


# The `_Batch` field of each tasks column read from batches.
_BATCH_FIELD = {
    "stream": "stream",
    "start_ns": "start",
    "end_ns": "end",
    "connection_id": "conn",
}


def _add_step(
    steps: dict[str, tuple[int, int] | None], name: str, span: tuple[int, int] | None
) -> None:
    old = steps.get(name)
    if old is None or span is None:
        steps[name] = span if old is None else old
    else:
        steps[name] = (min(old[0], span[0]), max(old[1], span[1]))


def step_spans(steps: dict[str, tuple[int, int] | None]) -> list[StepSpan]:
    """The `ProfilerStep#N` markers with usable spans, in step order."""
    out = []
    for name, span in steps.items():
        number = name[len("ProfilerStep#") :]
        if span is not None and number.isdigit():
            out.append(StepSpan(int(number), span[0], span[1]))
    return sorted(out, key=lambda s: (s.start_ns, s.number))


def _factorize(values: list[str]) -> _Factorized:
    codes, uniques = pd.factorize(np.asarray(values, dtype=object))
    return codes, uniques


def _valid_captures(
    names: npt.NDArray[np.object_], types: npt.NDArray[np.object_], nums: str, conn: list[str]
) -> bool:
    """True when the loose captures of `_bulk_re` are valid JSON values (see `_Reader.bulk`);
    `names` and `types` are the distinct string captures."""
    for strs in (names, types):
        raw = '"'.join(strs).encode("utf-8", "surrogatepass")
        if len(raw.translate(None, _CONTROL)) != len(raw):
            return False  # a raw control character inside a string
    for ints in ("," + nums, "," + ",".join(conn)):
        if (",0" in ints or ",-0" in ints) and _BAD_INT_RE.search(ints):
            return False  # a leading zero (pid, tid, connection_id; or a ts, which is harmless)
    return True


def _marked_events(gap: str, at: list[int]) -> list[Any] | None:
    """The top-level events of `gap` that contain the positions `at`, decoded; None when one does
    not decode. `gap` holds whole events and no brace inside a string (see `_gap_events`), so
    brace counts give the depth."""
    if len(at) > 64:
        spans = [(0, len(gap))]
    else:
        spans = []
        for a in at:
            if spans and a < spans[-1][1]:
                continue
            start = gap.rfind("{", 0, a + 1)
            while start > 0 and gap.count("{", 0, start) != gap.count("}", 0, start):
                start = gap.rfind("{", 0, start)
            if start < 0:
                return None
            depth, p = 0, start
            while True:
                o, c = gap.find("{", p), gap.find("}", p)
                if c < 0:
                    return None
                if 0 <= o < c:
                    depth, p = depth + 1, o + 1
                    continue
                depth, p = depth - 1, c + 1
                if depth == 0:
                    break
            if p <= a:
                return None  # the marker is not inside an event: let the exact path judge
            spans.append((start, p))
    out: list[Any] = []
    for a, b in spans:
        try:
            out.extend(json.loads("[" + gap[a:b].strip(" \t\n\r,") + "]"))
        except (json.JSONDecodeError, RecursionError):
            return None
    return out


def _gap_events(joined: str) -> int | None:
    """Number of top-level events in the "\x00"-joined gaps, or None unless every gap starts and
    ends outside strings at depth 0 and no string holds a brace (the caller has ruled out escaped
    quotes, so quotes pair up in order)."""
    compact = joined.encode("utf-8", "surrogatepass").translate(None, _NOT_STRUCT)
    # A string without braces is now `""`. When all quotes are in adjacent pairs (counted left to
    # right), the quotes paired in order were all adjacent: no brace or gap end lies inside a
    # string, and dropping the quotes leaves the structure.
    bare = compact.translate(None, b'"')
    if 2 * compact.count(b'""') != len(compact) - len(bare):
        return None
    if not bare:
        return 0
    a = np.frombuffer(bare, np.int8)
    step = (a == 123).astype(np.int8) - (a == 125).astype(np.int8)
    depth = np.cumsum(step, dtype=np.int64)
    if depth[-1] != 0 or depth.min() < 0 or depth[a == 0].any():
        return None
    return int(np.count_nonzero((step == 1) & (depth == 1)))


def _unescape(s: str) -> str:
    out = json.loads('"' + s + '"')
    return out if isinstance(out, str) else s


def _canon_to_json(row: tuple[str, ...]) -> str:
    name, pid, tid, ts, dur, ttype, conn = row
    return (
        f'{{"name":"{name}","pid":{pid},"tid":{tid},"ts":"{ts}","dur":{dur},"ph":"X",'
        f'"args":{{"Task Type":"{ttype}","connection_id":{conn}}}}}'
    )


def _ints(joined: str, n: int) -> npt.NDArray[np.int64]:
    """`n` comma-separated JSON integers as int64; OverflowError when one may not fit."""
    if not n:
        return np.zeros(0, np.int64)
    out = np.fromstring(joined, dtype=np.int64, sep=",")
    # np.fromstring saturates out-of-range values at the int64 maximum.
    if len(out) != n or (out == _I64_MAX).any():
        raise OverflowError
    return out


def read_trace_view(path: Path, *, workers: int | None = None) -> Profile:
    """Read one trace_view.json into an (unclassified) Profile; `path` is the file.

    A large file is read in parts of at least `PART_MIN_BYTES` by up to `workers` processes
    (default: $AUTOTUNE_READ_WORKERS, else min(cores, 8); 1 reads in this process only). The
    result is the same either way: when the parts cannot be proven to be the file's own events,
    or the file is cut off or invalid, it is read again in this process."""
    n = _parallel.workers(workers)
    if n > 1:
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        if PART_MIN_BYTES:
            n = min(n, size // PART_MIN_BYTES)
        if n > 1:
            r = _read_parallel(path, size, n)
            if r is not None:
                return _profile(r, [], truncated=False)
    return _profile(*_read_sequential(path))


def _scan(r: _Reader, fh: BinaryIO, size: int | None, opened: bool) -> tuple[str, int]:
    """Read events from `fh`'s position: `size` bytes, or to the end when None. Return the text
    left after the last chunk and where its undecoded rest starts (a `]` at the end of the array).

    `opened`: the position is inside the array, at an event; else the array's `[` comes first.
    """
    path = r.path
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    text = ""
    pos = 0
    left = size
    while True:
        want = CHUNK_BYTES if left is None else min(CHUNK_BYTES, left)
        raw = fh.read(want) if want else b""
        if left is not None:
            left -= len(raw)
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
                    f"{path}: not a trace_view.json (expected a JSON array of events, found {what})"
                )
            pos = len(text) - len(head) + 1
            opened = True
        if final:
            return text, r.exact(text, pos, True)
        cut = r.bulk(text, pos)
        pos = r.fast_chunk(text, pos) if cut is None else cut
        if len(text) - pos > MAX_EVENT_CHARS:
            pos = r.exact(text, pos, False)
            if len(text) - pos > MAX_EVENT_CHARS:
                raise AutotuneError(
                    f"{path}: invalid JSON after event {r.events} (no complete event in "
                    f"{MAX_EVENT_CHARS >> 20} MiB)"
                )


def _read_sequential(path: Path) -> tuple[_Reader, list[str], bool]:
    try:
        fh = path.open("rb")
    except OSError as exc:
        raise AutotuneError(f"{path}: cannot open trace ({exc.strerror or exc})") from None
    r = _Reader(path)
    warnings: list[str] = []
    with fh:
        text, pos = _scan(r, fh, None, False)
    truncated = False
    rest = text[pos:].strip(" \t\n\r")
    if rest.startswith("]"):
        if rest[1:].strip(" \t\n\r,"):
            raise AutotuneError(f"{path}: unexpected data after the closing bracket")
    elif _looks_truncated(r.decoder, text, pos):
        truncated = True
        warnings.append(
            f"{path}: file is cut off (no closing bracket); read {r.events} events up to "
            "the last complete one"
        )
    else:
        raise AutotuneError(f"{path}: invalid JSON after event {r.events}")
    return r, warnings, truncated


def _profile(r: _Reader, warnings: list[str], truncated: bool) -> Profile:
    path = r.path
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
        step_markers=step_spans(r.steps),
        warnings=warnings,
        truncated=truncated,
    )


# -- parallel read -------------------------------------------------------------------------------
#
# The file is split into byte ranges at candidate separators `}, {` (`_parallel.split`); such a
# candidate may lie inside a string or a nested array, so each range is read as if it started
# at an event, and the split is used only when it is proven right, by induction over the ranges:
# the first range starts at the array's `[`. When range k starts at an event boundary, its reading
# is the sequential reader's reading of those bytes (the same paths and checks), so if its events
# end exactly at its end (the `}` of the candidate: the final exact pass consumed everything),
# that `}` closes a top-level event and the `, {` after it starts the next one: range k + 1 starts
# at an event boundary. Only the last range reads the closing `]`. If it is missing (a cut-off
# file, whose warning counts the events the way one sequential pass does) or any check fails, the
# whole file is read in one pass.


@dataclass
class _Part:
    """What a worker sends back for one range: columns and tables, no per-event objects."""

    batches: list[_Batch]
    strings: list[str]
    process_names: dict[int, str]
    process_labels: dict[int, str]
    steps: dict[str, tuple[int, int] | None]
    events: int
    bad_tasks: int


def _read_range(path: Path, start: int, end: int, last: bool) -> _Reader | None:
    """Read the events of bytes `start:end` (to the end of the file when `last`); None unless
    they end exactly at `end` (or at the array's closing bracket when `last`)."""
    r = _Reader(path)
    try:
        with path.open("rb") as fh:
            fh.seek(start)
            text, pos = _scan(r, fh, None if last else end - start, start > 0)
    except (AutotuneError, OSError):
        return None
    if last:
        rest = text[pos:].strip(" \t\n\r")
        if not rest.startswith("]") or rest[1:].strip(" \t\n\r,"):
            return None
    elif pos != len(text):
        return None
    r._flush()
    return r


def _read_part(path: Path, start: int, end: int, last: bool) -> _Part | None:
    """`_read_range` in a worker process."""
    r = _read_range(path, start, end, last)
    if r is None:
        return None
    return _Part(
        batches=r.batches,
        strings=r.strings,
        process_names=r.process_names,
        process_labels=r.process_labels,
        steps=r.steps,
        events=r.events,
        bad_tasks=r.bad_tasks,
    )


def _read_parallel(path: Path, size: int, n: int) -> _Reader | None:
    """The file read in up to `n` ranges at once, merged in order; None when not proven exact."""
    try:
        ranges = _parallel.split(path, size, n)
    except OSError:
        return None
    if len(ranges) < 2:
        return None
    jobs = [(path, a, b, k == len(ranges) - 1) for k, (a, b) in enumerate(ranges)]
    done = _parallel.run_parts(_first_or_part, jobs)
    if done is None:
        return None
    r = done[0]
    assert isinstance(r, _Reader)
    for part in done[1:]:
        assert isinstance(part, _Part)
        r.merge(part)
    return r


def _first_or_part(path: Path, start: int, end: int, last: bool) -> _Reader | _Part | None:
    """The first range is read here (no copy of its columns); the others in workers."""
    if start == 0:
        return _read_range(path, start, end, last)
    return _read_part(path, start, end, last)


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
