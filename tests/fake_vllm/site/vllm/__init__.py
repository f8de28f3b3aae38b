"""Stand-in for the `vllm` package of a serving environment (autotune's tests only).

It holds what autotune's checks import in the serving interpreter: the `vllm serve` argument
parser (`vllm.entrypoints.cli.serve.ServeSubcommand` on `vllm.utils.argparse_utils.
FlexibleArgumentParser`), which the stand-in `vllm` executable also parses its arguments with.
"""

__version__ = "0.23.0+fake"
