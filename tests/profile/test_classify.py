"""Classifier: shipped rules on the samples, SDMA only on non-compute streams, user rules."""

from pathlib import Path

import pandas as pd
import pytest

from autotune.errors import AutotuneError
from autotune.profile import load_profiles
from autotune.profile.classify import classify, load_rules
from autotune.profile.tasks import TASK_COLUMNS, Profile

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
PER_LAYER = {
    "prefetch": 5,
    "wait": 9,
    "record": 10,
    "vector:norm": 3,
    "vector:quant": 4,
    "vector:swiglu": 1,
    "cube": 5,
    "comm": 4,
    "other": 1,
}


def _counts(p: Profile) -> dict[str, int]:
    return {str(k): int(v) for k, v in p.tasks["role"].value_counts().items()}


def test_current_sample_roles() -> None:
    (p,) = load_profiles(PROFILES / "dense_current_ascend_pt")
    assert _counts(p) == {k: 2 * v for k, v in PER_LAYER.items()}
    assert p.unclassified_types == {}
    assert p.steps == 2


def test_legacy_sdma_on_compute_stream_is_not_prefetch() -> None:
    (p,) = load_profiles(PROFILES / "dense_legacy_ascend_pt")
    assert _counts(p) == {**PER_LAYER, "other": 2}
    sdma = p.tasks[p.tasks["type"] == "SDMA_SQE"]
    assert sorted(zip(sdma["stream"], sdma["role"], strict=True))[0] == (2, "other")
    assert set(sdma[sdma["stream"] == 7]["role"]) == {"prefetch"}


def _one(ttype: str, name: str, op: str = "", stream: int = 2) -> Profile:
    df = pd.DataFrame(
        [(0, stream, name, ttype, op, 0, 1, -1, "trace_view")], columns=list(TASK_COLUMNS)
    )
    return Profile(path=Path("."), source="trace_view", tasks=df)


@pytest.mark.parametrize(
    ("ttype", "name", "op", "role"),
    [
        ("CMO_TASK", "CMO_TASK", "", "prefetch"),
        ("MEM_WAIT_VALUE", "MEM_WAIT_VALUE", "", "wait"),
        ("DAVID_EVENT_RECORD", "DAVID_EVENT_RECORD", "", "record"),
        ("AI_VECTOR_CORE", "DequantSwigluQuant", "", "vector:swiglu"),
        ("AI_VECTOR_CORE", "x", "AddRmsNormDynamicQuant", "vector:norm"),
        ("AI_VECTOR_CORE", "x", "MoeGatingTopKSoftmaxV2", "vector:gating"),
        ("KERNEL_AIVEC", "aclnnDynamicQuant_DynamicQuant_DynamicQuant", "", "vector:quant"),
        ("MIX_AIC", "x", "GroupedMatmulSwigluQuant", "cube"),
        ("HCCL", "x", "", "comm"),
        ("AI_VECTOR_CORE", "x", "Mul", "other"),
        # trace_view's most likely CMO: name CMO, Task Type SDMA_SQE.
        ("SDMA_SQE", "CMO", "", "prefetch"),
        # A memcpy is never a prefetch, even as an SDMA SQE on a stream without kernels.
        ("SDMA_SQE", "MEMCPY_ASYNC", "", "other"),
        ("PCIE_DMA_SQE", "MEMCPY_ASYNC", "", "other"),
        ("MEMCPY_ASYNC", "MEMCPY_ASYNC", "", "other"),
        # Real 910B captures: HCCL's own tasks, DSA kernels' host type.
        ("Notify Wait", "Notify Wait", "", "comm"),
        ("Write Value", "Write Value", "", "comm"),
        ("SDMA", "SDMA", "", "comm"),
        ("STARS_COMMON", "STARS_COMMON", "", "other"),
    ],
)
def test_synonyms(ttype: str, name: str, op: str, role: str) -> None:
    p = classify(_one(ttype, name, op), load_rules(None))
    assert p.tasks["role"].tolist() == [role]
    assert p.unclassified_types == {}


def test_unclassified_and_user_rules(tmp_path: Path) -> None:
    p = classify(_one("NEW_CMO_THING", "NEW_CMO_THING"), load_rules(None))
    assert p.tasks["role"].tolist() == ["other"]
    assert p.unclassified_types == {"NEW_CMO_THING": 1}
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nrole = "prefetch"\ntask_type = ["NEW_CMO_*"]\n'
        '[[rule]]\nrole = "cube"\nop_type = ["SwiGlu"]\n'
    )
    q = classify(_one("NEW_CMO_THING", "NEW_CMO_THING"), load_rules(rules))
    assert q.tasks["role"].tolist() == ["prefetch"] and q.unclassified_types == {}
    r = classify(_one("AI_VECTOR_CORE", "aclnnSwiGlu_SwiGlu_SwiGlu", "SwiGlu"), load_rules(rules))
    assert r.tasks["role"].tolist() == ["cube"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[[rule]\n", "invalid TOML"),
        ('[[rule]]\nrole = "fast"\nname = ["x"]\n', "rule #1: role 'fast'"),
        ('[[rule]]\nrole = "cube"\n', "rule #1: needs at least one"),
        ('[[rule]]\nrole = "cube"\nname = ["x"]\n[[rule]]\nrole = "cube"\nname = 3\n', "rule #2"),
        ('[[rule]]\nrole = "cube"\nname = ["x"]\nstream = "gpu"\n', "stream 'gpu'"),
        ('[[rule]]\nrole = "cube"\nnam = ["x"]\n', "unknown key"),
        ('[streams]\ncompute_roles = ["nope"]\n', "compute role"),
        ("[rules]\n", "unknown top-level"),
    ],
)
def test_bad_rules_file(tmp_path: Path, text: str, match: str) -> None:
    f = tmp_path / "bad.toml"
    f.write_text(text)
    with pytest.raises(AutotuneError, match=match) as e:
        load_rules(f)
    assert str(f) in str(e.value)


def test_other_stacks_roles() -> None:
    # MindIE's sparse attention is a cube op (an attention kernel); its CMO shows up as SDMA_SQE
    # on a stream that runs no compute. SGLang's HCCL stream runs Notify Wait / SDMA / Write Value.
    (mindie,) = load_profiles(PROFILES / "mindie_o_proj_ascend_pt")
    roles = mindie.tasks.groupby("op_type")["role"].first().to_dict()
    assert roles["SparseFlashAttention"] == "cube" and roles["KvRmsNormRopeCache"] == "other"
    cmo = mindie.tasks[mindie.tasks["type"] == "SDMA_SQE"]
    assert len(cmo) == 4 and set(cmo["role"]) == {"prefetch"}
    (sglang,) = load_profiles(PROFILES / "sglang_qwen3_ascend_pt")
    hccl = sglang.tasks[sglang.tasks["stream"] == 5]
    assert set(hccl.loc[hccl["type"] != "EVENT_WAIT", "role"]) <= {"comm", "record"}
    assert mindie.unclassified_types == {} and sglang.unclassified_types == {}
