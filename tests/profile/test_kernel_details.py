"""kernel_details.csv: header variants, tab after start time, op_type fill, aclnn name rule."""

from pathlib import Path

import pandas as pd
import pytest

from autotune.errors import AutotuneError
from autotune.profile.kernel_details import fill_op_types, op_type_from_name, read_kernel_details
from autotune.profile.tasks import TASK_COLUMNS

PROFILES = Path(__file__).resolve().parents[2] / "profiles"
KD = PROFILES / "dense_current_ascend_pt/ASCEND_PROFILER_OUTPUT/kernel_details.csv"
T0 = 1_776_130_000_000_000_000


def test_name_rule() -> None:
    assert op_type_from_name("aclnnSwiGlu_SwiGlu_SwiGlu") == "SwiGlu"
    assert op_type_from_name("aclnnDynamicQuantV2_DynamicQuant_DynamicQuant") == "DynamicQuant"
    assert op_type_from_name("DequantSwigluQuant") == ""
    assert op_type_from_name("aclnnFoo") == ""


def test_read_sample() -> None:
    kd = read_kernel_details(KD)
    assert len(kd) == 36
    row = kd.iloc[0]
    assert (row["device"], row["stream"], row["op_type"], row["start_ns"]) == (
        0,
        2,
        "AddRmsNorm",
        T0,
    )
    rope = kd[kd["name"] == "split_qkv_rmsnorm_rope_kernel"]
    assert set(rope["op_type"]) == {"SplitQkvRmsNormRope"}


def _tasks(rows: list[tuple[int, int, str, str, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        [(d, s, n, "AI_VECTOR_CORE", o, t, t + 1, -1, "trace_view") for d, s, n, o, t in rows],
        columns=list(TASK_COLUMNS),
    )


def test_fill_level0_header_without_stream(tmp_path: Path) -> None:
    csv = tmp_path / "kernel_details.csv"
    csv.write_text(
        "Device_id,Name,Type,Accelerator Core,Start Time(us),Duration(us),Wait Time(us),"
        "Block Num\r\n"
        "0,my_kernel,SwiGlu,AI_VECTOR_CORE,1776130000000001.234\t,1.000,0,40\r\n"
        "0,other,N/A,AI_VECTOR_CORE,1776130000000002.000\t,1.000,0,40\r\n"
    )
    kd = read_kernel_details(csv)
    assert kd["stream"].tolist() == [-1, -1]
    out = fill_op_types(
        _tasks(
            [
                (0, 2, "my_kernel", "", T0 + 1_234),
                (0, 2, "other", "", T0 + 2_000),
                (0, 2, "aclnnRmsNorm_RmsNorm_RmsNorm", "", T0 + 5),
            ]
        ),
        kd,
    )
    assert out["op_type"].tolist() == ["SwiGlu", "", "RmsNorm"]


def test_bad_csv(tmp_path: Path) -> None:
    csv = tmp_path / "kernel_details.csv"
    csv.write_text("a,b,c\r\n1,2,3\r\n")
    with pytest.raises(AutotuneError, match=r"kernel_details\.csv"):
        read_kernel_details(csv)
