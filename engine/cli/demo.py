"""`plugmem demo [QUERY]`: build the bundled demo memories (once) and run a sample search."""
from __future__ import annotations

import argparse
from pathlib import Path

from engine.cli.common import Output, ProgressBar, add_command


def cmd_demo(a, out: Output) -> int:
    from engine.demo import ensure_demo_workspace

    bar = ProgressBar("building demo memories", enabled=not a.json and not a.quiet)
    ws = ensure_demo_workspace(progress=bar)
    bar.close()
    from engine.memory import Memory

    results = {}
    for pack_path in ws["packs"]:
        with Memory.open(pack_path, on_message=out.info) as mem:
            q = a.query or "What is the capital of Japan?"
            results[Path(pack_path).stem] = [h.to_dict() for h in mem.search(q, k=3)]

    def human() -> str:
        lines = [f"demo workspace: {ws['folder']}"]
        for name, hits in results.items():
            lines.append(f"\n{name}:")
            lines += [f"  {h['score']:.3f}  {h['text']}" for h in hits]
        lines.append("\nTry: plugmem search " + ws["packs"][0] + ' "boiling point of iron" -k 5')
        return "\n".join(lines)

    out.emit({"workspace": ws, "results": results}, human)
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    sp = add_command(sub, [common], "demo", cmd_demo, "build the bundled demo memories (once) and run a sample search")
    sp.add_argument("query", nargs="?")
