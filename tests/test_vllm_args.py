"""`--serve-args` are read as vLLM 0.23's FlexibleArgumentParser reads `vllm serve`'s arguments
(vllm/utils/argparse_utils.py:243-429): underscores, -O, -cc, dotted options, --config FILE."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autotune.errors import AutotuneError
from autotune.workloads.vllm_args import read_serve_args, split_serve_args, vllm_argv


def _read(text: str) -> object:
    return read_serve_args(split_serve_args(text))


def test_underscores_are_dashes_and_short_flags_are_long_ones() -> None:
    s = read_serve_args(
        split_serve_args(
            "--tensor_parallel_size 4 --data_parallel_size=2 -ep --max_num_batched_tokens 40960 "
            "--served_model_name qwen3"
        )
    )
    assert (s.tp, s.dp, s.expert_parallel, s.max_num_batched_tokens) == (4, 2, True, 40960)
    assert s.served_model_name == "qwen3"


@pytest.mark.parametrize("text", ["-O3", "-O 3", "-O=3", "--optimization-level 3"])
def test_optimization_level_in_every_spelling(text: str) -> None:
    assert read_serve_args(split_serve_args(text)).optimization_level == 3


def test_O_is_the_optimization_level_not_the_compilation_config() -> None:
    s = read_serve_args(split_serve_args("-O0 --dtype bfloat16"))
    assert s.optimization_level == 0 and s.compilation == {}
    with pytest.raises(AutotuneError, match="takes 0, 1, 2 or 3"):
        read_serve_args(split_serve_args("-O7"))


def test_compilation_config_json_short_and_dotted() -> None:
    assert _cc('-cc {"cudagraph_mode":"FULL_DECODE_ONLY"}') == {
        "cudagraph_mode": "FULL_DECODE_ONLY"
    }
    assert _cc("-cc.cudagraph_mode=FULL_DECODE_ONLY -cc.mode 3") == {
        "cudagraph_mode": "FULL_DECODE_ONLY",
        "mode": 3,
    }
    assert _cc("--compilation_config.pass_config.fuse_norm_quant=false") == {
        "pass_config": {"fuse_norm_quant": False}
    }
    # As in vLLM, the dotted options come back as one value at the end: argparse keeps that one.
    assert _cc('-cc.mode=0 --compilation-config {"mode":3,"cudagraph_mode":"FULL"}') == {"mode": 0}


def _cc(text: str) -> dict[str, object]:
    return dict(read_serve_args(split_serve_args(text)).compilation)


def test_unquoted_json_stays_whole_where_a_shell_would_strip_its_quotes() -> None:
    # The form `--serve-args "-tp 4 --compilation-config {\"cudagraph_mode\":...}"` gives.
    argv = split_serve_args('-tp 4 --compilation-config {"cudagraph_mode":"FULL_DECODE_ONLY"}')
    assert argv == ("-tp", "4", "--compilation-config", '{"cudagraph_mode":"FULL_DECODE_ONLY"}')
    assert split_serve_args("-cc={\"a\": [1, 2]} --x 'y z'") == ('-cc={"a": [1, 2]}', "--x", "y z")
    assert split_serve_args('--a {"s":"}\\"{"} --b') == ("--a", '{"s":"}\\"{"}', "--b")


def test_config_file_is_read_with_the_command_line_winning(tmp_path: Path) -> None:
    config = tmp_path / "serve.yaml"
    config.write_text(
        "tensor-parallel-size: 4\nenforce-eager: true\nmax_num_batched_tokens: 8192\n"
        "compilation-config:\n  cudagraph_mode: FULL_DECODE_ONLY\n",
        encoding="utf-8",
    )
    s = read_serve_args(["--config", str(config), "-tp", "2"])
    assert (s.tp, s.enforce_eager, s.max_num_batched_tokens) == (2, True, 8192)
    assert s.compilation == {"cudagraph_mode": "FULL_DECODE_ONLY"}
    assert s.config_file == str(config)
    assert s.argv == ("--config", str(config), "-tp", "2")  # passed on untouched


@pytest.mark.parametrize(
    ("content", "name", "message"),
    [
        ("port: 9000\n", "c.yaml", "must not set --port"),
        ("a: [\n", "c.yaml", "not valid YAML"),
        ("{}", "c.json", "only a .yaml or .yml"),
        (None, "missing.yaml", "cannot read it"),
    ],
)
def test_a_config_file_is_read_or_refused(
    tmp_path: Path, content: str | None, name: str, message: str
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(AutotuneError, match=message) as info:
        read_serve_args(["--config", str(path)])
    assert "\n" not in str(info.value)


def test_config_equals_file_would_be_ignored_by_vllm_so_it_is_refused(tmp_path: Path) -> None:
    with pytest.raises(AutotuneError, match="only as --config FILE"):
        read_serve_args([f"--config={tmp_path / 'c.yaml'}"])


def test_owned_options_are_refused_in_any_spelling() -> None:
    for text in ("--max_num_seqs 8", "--profiler_config.profiler=torch", "--additional-config={}"):
        with pytest.raises(AutotuneError, match="must not set"):
            read_serve_args(split_serve_args(text))


def test_rewriting_matches_vllms() -> None:
    argv = vllm_argv(["--enable_prefix_caching", "-O", "2", "-cc.cudagraph_mode", "FULL", "x_y"])
    assert argv == [
        "--enable-prefix-caching",
        "--optimization-level",
        "2",
        "x_y",
        "-cc",
        json.dumps({"cudagraph_mode": "FULL"}),
    ]
