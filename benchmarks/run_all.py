"""Run every benchmark and write benchmarks/RESULTS.md.

    python benchmarks/run_all.py [NAME ...]      (or `make bench`)

Each `benchmarks/bench_*.py` exposes `run() -> list[dict]` with the keys
benchmark, ours, baseline, unit, ratio, target, met, notes; both sides of
every ratio are measured in the same run on the same machine. The machine
is described at the top of the results, since the figures mean nothing
without it.
"""

import datetime
import importlib
import os
import platform
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def machine_description() -> list[str]:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = ""
    try:
        kib = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f", {kib / 2**20:.0f} GiB memory"
    except (OSError, ValueError, IndexError):
        pass
    lines = [f"- CPU: {cpu}, {os.cpu_count()} cores{memory}", f"- Python {platform.python_version()}, {platform.platform()}"]
    try:
        import torch

        device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
        lines.append(f"- torch {torch.__version__}, GPU: {device}")
    except ImportError:
        pass
    return lines


def main(names: list[str]) -> int:
    modules = sorted(path.stem for path in HERE.glob("bench_*.py"))
    if names:
        unknown = [name for name in names if f"bench_{name}" not in modules and name not in modules]
        if unknown:
            print(f"run_all.py: error: unknown benchmark {unknown[0]!r} (have: {', '.join(modules)})", file=sys.stderr)
            return 2
        modules = [m for m in modules if m in names or m.removeprefix("bench_") in names]
    rows, failures = [], []
    for name in modules:
        print(f"== {name}", flush=True)
        started = time.perf_counter()
        try:
            rows.extend(importlib.import_module(name).run())
        except Exception:  # a broken benchmark must not hide the others' figures
            failures.append((name, traceback.format_exc(limit=3)))
            print(failures[-1][1], file=sys.stderr)
        print(f"   ({time.perf_counter() - started:.1f} s)", flush=True)

    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    out = [f"# Benchmark results", "", f"Measured {stamp} by `make bench` on:", "", *machine_description(), "",
           "| benchmark | ours | baseline | unit | ratio | target | met | notes |",
           "| --- | ---: | ---: | --- | ---: | --- | --- | --- |"]
    for row in rows:
        out.append(
            f"| {row['benchmark']} | {row['ours']:.4g} | {row['baseline']:.4g} | {row['unit']} | "
            f"{row['ratio']:.3g} | {row['target']} | {'yes' if row['met'] else '**no**'} | {row.get('notes', '')} |"
        )
    for name, text in failures:
        out += ["", f"{name} failed:", "", "```", text.strip(), "```"]
    (HERE / "RESULTS.md").write_text("\n".join(out) + "\n", encoding="utf-8")
    print("\n".join(out))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
