"""The vectorised classifier gives exactly the per-row reference's roles and unmatched counts."""

from collections import Counter
from pathlib import Path

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from autotune.profile.classify import Rules, _role, classify, load_rules, parse_rules
from autotune.profile.tasks import TASK_COLUMNS, Profile


def _reference(t: pd.DataFrame, rules: Rules) -> tuple[list[str], dict[str, int]]:
    """Row by row: pass 1 finds compute streams, pass 2 classifies with the stream kind."""
    keys = list(zip(t["type"], t["op_type"], t["name"], strict=True))
    compute: set[tuple[int, int]] = set()
    for dev, stream, k in zip(t["device"], t["stream"], keys, strict=True):
        role = _role(rules, k[0], k[1], k[2], None)
        if (role is not None and role in rules.compute_roles) or k[0] in rules.compute_types:
            compute.add((dev, stream))
    roles: list[str] = []
    unmatched: Counter[str] = Counter()
    for dev, stream, k in zip(t["device"], t["stream"], keys, strict=True):
        role = _role(rules, k[0], k[1], k[2], (dev, stream) in compute)
        if role is None:
            unmatched[k[0] or k[2] or "<empty>"] += 1
            role = "other"
        roles.append(role)
    return roles, dict(unmatched)


TYPES = ["AI_VECTOR_CORE", "AI_CORE", "SDMA_SQE", "CMO", "EVENT_WAIT", "NEW_THING", ""]
OPS = ["", "SwiGlu", "QuantBatchMatmulV3", "Mul", "AddRmsNorm"]
NAMES = ["aclnnSwiGlu_SwiGlu_SwiGlu", "x_RmsNorm", "CMO", "", "EVENT_RECORD", "memcpy"]
ROW = st.tuples(
    st.integers(0, 2),
    st.integers(0, 4),
    st.sampled_from(NAMES),
    st.sampled_from(TYPES),
    st.sampled_from(OPS),
)
USER = parse_rules(
    {
        "rule": [
            {"role": "cube", "task_type": ["NEW_*"], "stream": "no_compute"},
            {"role": "vector:norm", "name": ["x_*"], "stream": "compute"},
        ],
        "streams": {"compute_types": ["SDMA_SQE"]},
    },
    "test",
)


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(ROW, max_size=60), user=st.booleans())
def test_matches_reference(rows: list[tuple[int, int, str, str, str]], user: bool) -> None:
    base = load_rules(None)
    rules = (
        Rules(USER.rules + base.rules, base.compute_roles, base.compute_types | USER.compute_types)
        if user
        else base
    )
    t = pd.DataFrame(
        [(d, s, n, ty, op, i, i + 1, -1, "trace_view") for i, (d, s, n, ty, op) in enumerate(rows)],
        columns=list(TASK_COLUMNS),
    ).astype({c: object for c in ("name", "type", "op_type", "source")})
    p = classify(Profile(path=Path("."), source="trace_view", tasks=t), rules)
    roles, unmatched = _reference(t, rules)
    assert p.tasks["role"].tolist() == roles
    assert p.unclassified_types == unmatched
    assert p.tasks["role"].dtype == object
    assert p.tasks.drop(columns="role").equals(t)
