"""`plugmem probes make PACK --out PROBES.jsonl [--sample N] [--seed S] [--json]`: cloze
probes from a pack's own entries (engine.evaluate.cloze), written for `plugmem eval`."""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from engine.cli.common import CliError, Output, add_command, open_pack
from engine.cli_args import positive


def cmd_probes_make(a, out: Output) -> int:
    from engine.evaluate.cloze import make_probes, write_probes

    with open_pack(a.pack) as pack:
        probes = make_probes(pack, sample=a.sample, seed=a.seed)
    if not probes:
        raise CliError(f"{a.pack}: no active entry long enough to make a probe from")
    try:
        path = write_probes(probes, a.out)
    except OSError as exc:
        raise CliError(f"{a.out}: cannot write ({exc.strerror or exc})") from None
    how = Counter(p.split_by for p in probes)
    paras = sum(len(p.paraphrases) for p in probes)
    data = {"pack": str(a.pack), "out": str(path), "probes": len(probes), "split_by": dict(how),
            "paraphrases": paras, "sample": a.sample, "seed": a.seed}
    out.emit(data, lambda: (f"{len(probes):,} probes from {Path(a.pack).name} written to {path} "
                            f"({how.get('triple', 0):,} cut at a triple's object, {how.get('sentence', 0):,} "
                            f"from the sentence; {paras:,} paraphrases); run them with `plugmem eval {path} --memory {a.pack}`"))
    return 0


def add_parsers(sub, common: argparse.ArgumentParser) -> None:
    pp = sub.add_parser("probes", help="fact probes made from a pack's own entries",
                        description="fact probes made from a pack's own entries")
    psub = pp.add_subparsers(dest="probes_cmd", required=True, metavar="ACTION")
    help = "write one cloze probe per active entry (or a sample): the entry with its object cut off"
    sp = add_command(psub, [common], "make", cmd_probes_make, help)
    sp.add_argument("pack")
    sp.add_argument("--out", required=True, metavar="PROBES.jsonl")
    sp.add_argument("--sample", type=positive, metavar="N", help="a reproducible sample of N active entries")
    sp.add_argument("--seed", type=int, default=0, help="the sample's random seed (default 0)")
