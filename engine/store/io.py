"""Export of a pack's live entries to JSONL or CSV, in a form that imports back losslessly.

Columns: id, title, text, source, tags, status, created, updated, version. In CSV,
tags are joined with commas (a tag never contains one). Importing such a file keeps
title, text, source, tags and status (the corpus parser accepts these columns); ids,
times and versions are the new pack's own.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from engine.store.pack import Pack

EXPORT_COLUMNS = ("id", "title", "text", "source", "tags", "status", "created", "updated", "version")


def export_pack(pack: "Pack", dest: Path, batch: int = 5000) -> int:
    """Write the live entries to ``dest`` (.jsonl or .csv) atomically; returns how many."""
    fmt = dest.suffix.lower()
    if fmt not in (".jsonl", ".csv"):
        raise ValueError(f"{dest}: export format must be .jsonl or .csv")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    n = 0
    f = open(tmp, "w", encoding="utf-8", newline="")
    try:
        with f:
            writer = csv.writer(f) if fmt == ".csv" else None
            if writer:
                writer.writerow(EXPORT_COLUMNS)
            for e in pack.iter_entries(batch=batch):
                d = e.to_dict()
                if writer:
                    writer.writerow([",".join(d["tags"]) if c == "tags" else d[c] for c in EXPORT_COLUMNS])
                else:
                    f.write(json.dumps({c: d[c] for c in EXPORT_COLUMNS}, ensure_ascii=False) + "\n")
                n += 1
        os.replace(tmp, dest)
    except BaseException:  # a full disk or Ctrl+C: no half-written file stays beside dest
        tmp.unlink(missing_ok=True)
        raise
    return n
