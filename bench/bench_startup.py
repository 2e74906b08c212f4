"""Start-up time to a painted main window: the packaged app against `python -m app`, same run.

    .venv/bin/python bench/bench_startup.py [--runs 3] [--exe dist/plugmem-studio/plugmem-studio]

Both start on the same (already built) demo workspace, offscreen, with a private user
folder; the clock runs from process creation until the app prints "painted", which it
does on the first paint of the memory browser with rows (``--startup-probe``). The
first run of each is a warm-up (disk cache), the median of the rest is reported.
Goal: bundled app < 5 s on this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def time_to_paint(cmd: list[str], env: dict[str, str], timeout: float = 300.0) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.strip() == "painted":
                t = time.perf_counter() - t0
                proc.wait(timeout=60)
                return t
            if time.perf_counter() - t0 > timeout:
                break
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    raise RuntimeError(f"{cmd[0]}: never painted (exit {proc.returncode})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--exe", default=str(ROOT / "dist" / "plugmem-studio" / "plugmem-studio"))
    a = p.parse_args()
    exe = Path(a.exe)
    if not exe.is_file():
        print(f"{exe}: no bundle; build it with packaging/build.sh", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="plugmem-startup-") as tmp:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PLUGMEM_")}
        env.update(QT_QPA_PLATFORM="offscreen", PLUGMEM_HOME=str(Path(tmp) / "home"), HF_HUB_OFFLINE="1")
        # the first start copies the demo packs into the private home: not timed
        time_to_paint([str(exe), "--startup-probe"], env)
        results = {}
        for name, cmd in (("bundle", [str(exe), "--startup-probe"]),
                          ("python -m app", [str(ROOT / ".venv" / "bin" / "python"), "-m", "app", "--startup-probe"])):
            times = [time_to_paint(cmd, env) for _ in range(a.runs + 1)][1:]
            results[name] = statistics.median(times)
            print(f"{name:>14}: median {results[name]:.2f} s over {a.runs} runs ({', '.join(f'{t:.2f}' for t in times)})")
    ratio = results["bundle"] / results["python -m app"]
    size = sum(f.stat().st_size for f in exe.parent.rglob("*") if f.is_file())
    print(f"ratio bundle / python -m app: {ratio:.2f}; bundle size {size / 2**30:.2f} GiB; goal bundle < 5 s")
    print(f"| {time.strftime('%Y-%m-%d')} | {platform.machine()} {os.cpu_count()} cores | {results['bundle']:.2f} | "
          f"{results['python -m app']:.2f} | {ratio:.2f} | {size / 2**30:.2f} GiB |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
