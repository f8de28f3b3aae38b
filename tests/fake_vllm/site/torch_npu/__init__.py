"""Stand-in for torch_npu in a serving environment (autotune's tests only): its offline
`torch_npu.profiler.profiler.analyse`, which completes the raw rank folders the stand-in
`vllm` leaves, as torch_npu leaves them in vLLM's daemon workers."""

__version__ = "2.10.0.post4+fake"
