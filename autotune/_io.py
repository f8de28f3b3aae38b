"""Reading the user's files and the run directory's JSON files with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from autotune.errors import AutotuneError


def read_text(path: Path, where: str) -> str:
    """A user file's text; AutotuneError naming `where` (e.g. "--config x.json") if unreadable."""
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise AutotuneError(f"{where}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AutotuneError(f"{where}: cannot read it ({exc})") from None


def read_json(path: Path) -> Any:
    """Read a JSON file; AutotuneError (one line) when it is missing or broken."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise AutotuneError(f"{path} not found") from None
    except OSError as exc:
        raise AutotuneError(f"cannot read {path}: {exc.strerror or exc}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AutotuneError(f"{path} is not valid JSON: {exc}") from None


def read_json_object(path: Path) -> dict[str, Any]:
    """Like `read_json`, for a file that must hold a JSON object."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise AutotuneError(f"{path} must hold a JSON object, not {type(data).__name__}")
    return data
