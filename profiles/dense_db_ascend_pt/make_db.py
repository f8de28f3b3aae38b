"""Rebuilds ASCEND_PROFILER_OUTPUT/ascend_pytorch_profiler_0.db (run this file with python)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from make_samples import build_db

build_db(
    Path(__file__).resolve().parent / "ASCEND_PROFILER_OUTPUT" / "ascend_pytorch_profiler_0.db", 2
)
