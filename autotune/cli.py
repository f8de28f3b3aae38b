"""The `autotune` command line: wiring only. Every command calls plain functions in its module."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from autotune.errors import AutotuneError

app = typer.Typer(
    name="autotune",
    help="Tune vllm-ascend 0.23 weight prefetch by measurement.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

F = TypeVar("F", bound=Callable[..., Any])


def _stderr() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def _clean_errors(fn: F) -> F:
    """Turn AutotuneError into one line on stderr and exit code 2; Ctrl-C into exit 130."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except AutotuneError as exc:
            _stderr().print(f"error: {exc}", markup=False)
            raise typer.Exit(code=exc.exit_code) from None
        except KeyboardInterrupt:
            _stderr().print("interrupted", markup=False)
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


@app.command()
@_clean_errors
def analyze(
    path: Annotated[Path, typer.Argument(help="A *_ascend_pt dir, its parent, or ASCEND_PROFILER_OUTPUT.")],
    json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    rules: Annotated[
        Path | None, typer.Option(help="TOML rules that extend or override the shipped classifier.")
    ] = None,
    html: Annotated[Path | None, typer.Option(help="Also write a self-contained HTML report.")] = None,
    tolerance_us: Annotated[
        float, typer.Option(help="A prefetch counts as late only past this many µs.")
    ] = 0.0,
) -> None:
    """Check that every CMO prefetch hides behind its vector op and ends before it."""
    raise NotImplementedError


def main() -> None:
    app()


if __name__ == "__main__":
    sys.exit(main())
