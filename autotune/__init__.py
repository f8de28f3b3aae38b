"""autotune: tune vllm-ascend 0.23 weight prefetch by measurement."""

__version__ = "0.1.0"
