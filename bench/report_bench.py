"""HTML report size and load time for a 64-layer, 8-step profile.

Usage: python bench/report_bench.py [--out DIR] [--generated]

Writes the profile with the simulator (or, with --generated or without a simulator, with the test
suite's tiny trace_view writer scaled up), analyses it, writes the analyze report and opens it in
headless Chromium. Prints the file size and the browser's navigation timing. Budget: < 5 MB, < 2 s.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAYERS, STEPS = 64, 8
SIZE_BUDGET = 5 * 1024 * 1024
LOAD_BUDGET_S = 2.0


def simulated_profile(out: Path) -> Path | None:
    """A 64-layer, 8-step profile from the simulator backend; None when it is not available."""
    try:
        from autotune.target import vendor_default_config
        from autotune.workloads.base import Workload
        from autotune.workloads.simulate import simulate_once
    except ImportError:
        return None
    # Qwen3-32B has 64 decoder layers.
    workload = Workload(model="Qwen3-32B-W8A8", max_num_seqs=72, profile_steps=STEPS)
    _, result = simulate_once(workload, vendor_default_config(), out / "trial")
    return result.profile_dir


def generated_profile(out: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests" / "report"))
    from report_helpers import write_trace_view_profile

    return write_trace_view_profile(out, layers=LAYERS, steps=STEPS)


def load_seconds(html: Path) -> tuple[float, float]:
    """(navigation duration, loadEventEnd) in seconds, from the Navigation Timing API."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    sys.path.insert(0, str(REPO / "tests" / "report"))
    from report_helpers import CHROMIUM_ARGS, find_binary  # the flags the browser tests use

    chromium = find_binary("chromium", "chromium-browser")
    driver_bin = find_binary("chromedriver")
    if chromium is None or driver_bin is None:
        raise SystemExit(
            "needs chromium and chromedriver (apt-get install chromium chromium-driver)"
        )
    user_dir = tempfile.mkdtemp(prefix="autotune-bench-")
    options = webdriver.ChromeOptions()
    for arg in (*CHROMIUM_ARGS, f"--user-data-dir={user_dir}"):
        options.add_argument(arg)
    options.binary_location = chromium
    driver = webdriver.Chrome(options=options, service=Service(driver_bin))
    try:
        driver.get("about:blank")  # warm the browser so only the report's load is measured
        driver.get(html.resolve().as_uri())
        nav = driver.execute_script(
            "const n = performance.getEntriesByType('navigation')[0];"
            "return [n.duration, n.loadEventEnd];"
        )
        return float(nav[0]) / 1000, float(nav[1]) / 1000
    finally:
        driver.quit()
        shutil.rmtree(user_dir, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "report")
    ap.add_argument("--generated", action="store_true", help="skip the simulator")
    args = ap.parse_args()
    from autotune.overlap import analyze
    from autotune.profile import load_profiles
    from autotune.report.html import write_analyze_report

    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    pt = None if args.generated else simulated_profile(out)
    source = "simulator" if pt is not None else "generated trace_view"
    if pt is None:
        pt = generated_profile(out)
    t0 = time.perf_counter()
    profiles = load_profiles(pt)
    result = analyze(profiles)
    t1 = time.perf_counter()
    html = out / "report.html"
    write_analyze_report(result, profiles, html)
    t2 = time.perf_counter()
    size = html.stat().st_size
    nav_s, load_s = load_seconds(html)
    tasks = sum(len(p.tasks) for p in profiles)
    print(
        f"profile: {source}, {tasks:,} tasks, {len(result.prefetches):,} prefetches, "
        f"{result.steps} steps"
    )
    print(f"read+analyse {t1 - t0:.2f} s, write report {t2 - t1:.2f} s")
    print(
        f"report size: {size / 1024:.1f} KiB ({size:,} bytes; budget {SIZE_BUDGET / 2**20:.0f} MiB)"
    )
    print(
        f"browser load: navigation {nav_s * 1000:.0f} ms, loadEventEnd {load_s * 1000:.0f} ms "
        f"(budget {LOAD_BUDGET_S:.0f} s)"
    )
    ok = size < SIZE_BUDGET and load_s < LOAD_BUDGET_S
    print("within budget" if ok else "OVER BUDGET")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
