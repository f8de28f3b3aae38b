"""The task classifier: data-driven rules (rules.toml, extendable with `--rules FILE`) -> role."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pandas as pd

from autotune.errors import AutotuneError
from autotune.profile.tasks import ROLE_COLUMN, ROLES, Profile

_MATCHERS = ("task_type", "op_type", "name")
_STREAM_KINDS = ("any", "compute", "no_compute")
_RULE_KEYS = {"role", "stream", *_MATCHERS}
_STREAM_KEYS = {"compute_roles", "compute_types"}


@dataclass(frozen=True)
class Rule:
    """One classifier rule; each matcher is a compiled alternation of globs, or None."""

    role: str
    task_type: re.Pattern[str] | None
    op_type: re.Pattern[str] | None
    name: re.Pattern[str] | None
    stream: str  # "any" | "compute" | "no_compute"
    origin: str  # "<file> rule #N", for messages


@dataclass
class Rules:
    """An ordered rule list plus what makes a stream a compute stream."""

    rules: list[Rule] = field(default_factory=list)
    compute_roles: set[str] = field(default_factory=set)
    compute_types: set[str] = field(default_factory=set)


def _globs(patterns: list[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _str_list(value: object, where: str, key: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise AutotuneError(f"{where}: '{key}' must be a non-empty list of strings")
    return list(value)


def parse_rules(data: dict[str, Any], source: str) -> Rules:
    """Validate a parsed rules TOML document; errors name `source` and the entry."""
    unknown = set(data) - {"rule", "streams"}
    if unknown:
        raise AutotuneError(f"{source}: unknown top-level key(s) {sorted(unknown)}; use [[rule]]")
    raw = data.get("rule", [])
    if not isinstance(raw, list):
        raise AutotuneError(f"{source}: 'rule' must be an array of tables ([[rule]])")
    out = Rules()
    for i, entry in enumerate(raw, 1):
        where = f"{source} rule #{i}"
        if not isinstance(entry, dict):
            raise AutotuneError(f"{where}: must be a table")
        bad = set(entry) - _RULE_KEYS
        if bad:
            raise AutotuneError(f"{where}: unknown key(s) {sorted(bad)}")
        role = entry.get("role")
        if role not in ROLES:
            raise AutotuneError(f"{where}: role {role!r} is not one of {', '.join(ROLES)}")
        stream = entry.get("stream", "any")
        if stream not in _STREAM_KINDS:
            raise AutotuneError(f"{where}: stream {stream!r} is not one of {_STREAM_KINDS}")
        pats = {k: _str_list(entry[k], where, k) for k in _MATCHERS if k in entry}
        if not pats:
            raise AutotuneError(f"{where}: needs at least one of {', '.join(_MATCHERS)}")
        try:
            compiled = {k: _globs(v) for k, v in pats.items()}
        except re.error as exc:
            raise AutotuneError(f"{where}: bad pattern ({exc})") from None
        out.rules.append(
            Rule(
                role=str(role),
                task_type=compiled.get("task_type"),
                op_type=compiled.get("op_type"),
                name=compiled.get("name"),
                stream=str(stream),
                origin=where,
            )
        )
    streams = data.get("streams", {})
    if not isinstance(streams, dict):
        raise AutotuneError(f"{source}: [streams] must be a table")
    bad = set(streams) - _STREAM_KEYS
    if bad:
        raise AutotuneError(f"{source} [streams]: unknown key(s) {sorted(bad)}")
    if "compute_roles" in streams:
        roles = _str_list(streams["compute_roles"], f"{source} [streams]", "compute_roles")
        for r in roles:
            if r not in ROLES:
                raise AutotuneError(f"{source} [streams]: compute role {r!r} is not a role")
        out.compute_roles = set(roles)
    if "compute_types" in streams:
        out.compute_types = set(
            _str_list(streams["compute_types"], f"{source} [streams]", "compute_types")
        )
    return out


def _load_toml(text: str, source: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise AutotuneError(f"{source}: invalid TOML ({exc})") from None


def shipped_rules() -> Rules:
    """The rules shipped with the package."""
    text = resources.files("autotune.profile").joinpath("rules.toml").read_text("utf-8")
    return parse_rules(_load_toml(text, "rules.toml"), "rules.toml (shipped)")


def load_rules(user: Path | None = None) -> Rules:
    """Shipped rules, with a user rules file's rules tried first and its [streams] sets added."""
    base = shipped_rules()
    if user is None:
        return base
    try:
        text = user.read_text("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise AutotuneError(f"{user}: cannot read rules file ({exc})") from None
    extra = parse_rules(_load_toml(text, str(user)), str(user))
    return Rules(
        rules=extra.rules + base.rules,
        compute_roles=base.compute_roles | extra.compute_roles,
        compute_types=base.compute_types | extra.compute_types,
    )


def _suffix(name: str) -> str:
    return name.rsplit("_", 1)[-1]


def _role(rules: Rules, ttype: str, op: str, name: str, compute: bool | None) -> str | None:
    """First matching rule's role; `compute` None means stream conditions are not known yet."""
    op_key = op or _suffix(name)
    for r in rules.rules:
        if r.stream != "any" and (compute is None or (r.stream == "compute") != compute):
            continue
        if r.task_type is not None and not r.task_type.match(ttype):
            continue
        if r.op_type is not None and not r.op_type.match(op_key):
            continue
        if r.name is not None and not r.name.match(name):
            continue
        return r.role
    return None


def _object_array(values: list[str | None]) -> npt.NDArray[np.object_]:
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def _codes(column: pd.Series) -> tuple[npt.NDArray[np.intp], npt.NDArray[Any]]:
    """Integer codes and the values they stand for; free when the column is a Categorical."""
    if isinstance(column.dtype, pd.CategoricalDtype) and not column.isna().any():
        codes = np.asarray(column.cat.codes.to_numpy(), dtype=np.intp)
        return codes, column.cat.categories.to_numpy(object)
    codes, uniques = pd.factorize(column, use_na_sentinel=False)
    return np.asarray(codes, dtype=np.intp), np.asarray(uniques, dtype=object)


def classify(profile: Profile, rules: Rules | None = None) -> Profile:
    """Add the role column to `profile.tasks` and count unmatched task types; returns `profile`.

    Rules are evaluated once per distinct (type, op_type, name, compute stream) combination; rows
    are mapped to their combination with hash-based factorisation, so the cost per row is numpy's.
    """
    rules = rules if rules is not None else shipped_rules()
    t = profile.tasks
    if len(t) == 0:
        t = t.copy()
        t[ROLE_COLUMN] = pd.Series(dtype=object)
        profile.tasks = t
        return profile
    # One code per distinct (type, op_type, name) key.
    parts = [_codes(t[c]) for c in ("type", "op_type", "name")]
    key_codes = np.zeros(len(t), np.int64)
    for codes, uniques in parts:
        key_codes, _ = pd.factorize(key_codes * len(uniques) + codes)  # stays < len(t)
    (ty_c, ty_u), (op_c, op_u), (nm_c, nm_u) = parts
    # The first row of each key (codes are 0..n-1), to read the key's strings back.
    _, first_row = np.unique(key_codes, return_index=True)
    keys = [
        (str(ty_u[ty_c[i]]), str(op_u[op_c[i]]), str(nm_u[nm_c[i]])) for i in first_row.tolist()
    ]
    # Pass 1 (stream conditions unknown) tells which streams run compute.
    computes = np.array(
        [
            (role is not None and role in rules.compute_roles) or k[0] in rules.compute_types
            for k in keys
            for role in (_role(rules, k[0], k[1], k[2], None),)
        ],
        dtype=bool,
    )
    dev_c, dev_u = pd.factorize(t["device"])
    st_c, st_u = pd.factorize(t["stream"])
    stream_key = dev_c.astype(np.int64) * len(st_u) + st_c
    compute_stream = np.zeros(len(dev_u) * len(st_u), dtype=bool)
    compute_stream[stream_key[computes[key_codes]]] = True
    # Pass 2 with the stream kind known.
    pair_codes, pair_first = pd.factorize(key_codes * 2 + compute_stream[stream_key])
    pair_roles = []
    for p in pair_first.tolist():
        ty, op, nm = keys[p >> 1]
        pair_roles.append(_role(rules, ty, op, nm, bool(p & 1)))
    counts = np.bincount(pair_codes, minlength=len(pair_first))
    unmatched: Counter[str] = Counter()
    for p, role, n in zip(pair_first.tolist(), pair_roles, counts.tolist(), strict=True):
        if role is None:
            k = keys[p >> 1]
            unmatched[k[0] or k[2] or "<empty>"] += n
    roles = _object_array([r if r is not None else "other" for r in pair_roles])
    profile.tasks = t.assign(
        **{ROLE_COLUMN: pd.Series(roles[pair_codes], index=t.index, dtype=object)}
    )
    merged = Counter(profile.unclassified_types)
    merged.update(unmatched)
    profile.unclassified_types = dict(merged)
    return profile
