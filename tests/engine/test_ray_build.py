"""Building a memory on Ray Data (the `scale` extra), on a real local Ray instance of 2 CPUs:
the same pack as a local build, refused inputs, a lost worker, a cancelled and a killed run."""
from __future__ import annotations

import json
import os
import signal

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
psutil = pytest.importorskip("psutil")

from engine.jobs.build_memory import build_memory  # noqa: E402
from engine.store.corpus import file_key  # noqa: E402
from engine.progress import JobCancelled  # noqa: E402
from engine.jobs.ray_build import ray_build  # noqa: E402
from engine.memory import Memory  # noqa: E402
from engine.store import Pack  # noqa: E402
from tests.engine._kill import start_and_kill  # noqa: E402

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One local Ray for the module (starting one takes seconds); ray_build joins it."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def _corpus(tmp_path, n: int, name: str = "facts.jsonl"):
    p = tmp_path / name
    rows = [{"text": f"Fact number {i}: the sample value of item {i} is {i * 7}.", "title": f"Item {i}",
             "tags": ["sample", f"group{i % 5}"]} for i in range(n)]
    p.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return p


def _entries(path):
    with Pack.open(path, readonly=True) as p:
        ids = p.ids()
        entries = p.get_many(ids)
        keys, ok = p.get_vectors(ids)
    assert ok.all(), "every entry has an up-to-date key"
    return [(e.id, e.title, e.text, e.source, e.tags, e.status) for e in entries], keys


def _ray(pack, inputs, **kw):
    cfg = {"pack": str(pack), "inputs": [str(i) for i in inputs], "workers": 2, "chunk_size": 32, **kw}
    return cfg


def test_ray_built_pack_equals_the_local_build_entry_for_entry_and_key_for_key(tmp_path, encoder, capsys):
    jsonl = _corpus(tmp_path, 300)
    csv = tmp_path / "table.csv"
    csv.write_text("title,text,tags\n" + "".join(f'Row {i},"Row {i} of the table says {i * i}.","t{i % 3}"\n'
                                                  for i in range(40)), encoding="utf-8")
    md = tmp_path / "notes.md"
    md.write_text("# Rivers\n\nThe Danube flows into the Black Sea.\n\n## Seas\n\nThe Rhine flows into the North Sea.\n",
                  encoding="utf-8")
    inputs = [jsonl, csv, md, jsonl]  # a file named twice is imported once
    local = build_memory({"pack": str(tmp_path / "local.plugmem"), "inputs": [str(i) for i in inputs]},
                         lambda *a, **k: None, lambda: False)
    events = []
    res = ray_build(_ray(tmp_path / "ray.plugmem", inputs), lambda f, m="", **k: events.append(f), lambda: False)
    assert res["errors"] == [] and res["entries_added"] == local["entries_added"] == 342
    assert res["files_imported"] == local["files_imported"] and res["files_skipped"] == local["files_skipped"] == [str(jsonl)]
    assert res["workers"] == 2 and res["shards"] == 10 + 2 + 1 and res["duplicate_shards"] == 0
    assert events[-1] == 1.0 and events == sorted(events)
    want, want_keys = _entries(tmp_path / "local.plugmem")
    got, got_keys = _entries(tmp_path / "ray.plugmem")
    assert got == want  # ids, titles, texts, file:line sources, tags, status: in the same order
    np.testing.assert_allclose(got_keys, want_keys, atol=2e-5)  # other batches pad differently
    with Pack.open(tmp_path / "ray.plugmem", readonly=True) as p:
        assert [p.import_state(file_key(i)).state for i in inputs] == ["done"] * 4
    with Memory.open(tmp_path / "ray.plugmem", encoder) as m:
        assert len(m.index) == 342
        assert m.search("Which sea does the Danube reach?", k=1)[0].entry.text == "The Danube flows into the Black Sea."
    # the same inputs again, through the CLI: every file is recognised as imported, nothing added
    from engine.cli import main

    capsys.readouterr()
    assert main(["import", str(tmp_path / "ray.plugmem"), *map(str, inputs), "--json", "--ray", "--workers", "2"]) == 0
    again = json.loads(capsys.readouterr().out)  # exactly one JSON document
    assert again["entries_added"] == 0 and again["files_skipped"] == [str(i) for i in inputs]


def test_a_bad_file_refuses_the_run_before_anything_is_committed(tmp_path):
    good = _corpus(tmp_path, 50)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "A good line."}\n{"text": "Another good line."}\n{"text": broken\n', encoding="utf-8")
    pack = tmp_path / "d.plugmem"
    Pack.create(pack).close()
    with Pack.open(pack, readonly=True) as p:
        cv = p.content_version
    res = ray_build(_ray(pack, [good, bad]), lambda *a, **k: None, lambda: False)
    assert len(res["errors"]) == 1 and res["errors"][0].startswith(f"{bad}:3: not valid JSON")
    assert res["entries_added"] == 0
    with Pack.open(pack, readonly=True) as p:
        assert p.count() == 0 and p.content_version == cv
        assert p.import_state(file_key(good)) is None  # not even begun


def _encoder_actor_pids() -> list[int]:
    """PIDs of this test's Ray encoder actors (descendants of this process only: the machine
    is shared, and other people's processes are not ours to kill)."""
    me = psutil.Process(os.getpid())
    return [c.pid for c in me.children(recursive=True)
            if "ShardEncoder" in " ".join(_cmdline(c))]


def _cmdline(proc) -> list[str]:
    try:
        return proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return []


def test_a_worker_killed_mid_run_loses_and_duplicates_nothing(tmp_path):
    n = 600
    src = _corpus(tmp_path, n)
    pack = tmp_path / "d.plugmem"
    killed: list[tuple[int, int]] = []  # (pid, entries committed when it was killed)

    def kill_a_worker_once(fraction, message="", **metrics):
        done = metrics.get("entries", 0)
        if not killed and done >= 8:  # the first shard is committed, the pool is busy
            pids = _encoder_actor_pids()
            assert pids, "no encoder actor found among this test's processes"
            os.kill(pids[0], signal.SIGKILL)
            killed.append((pids[0], done))

    res = ray_build(_ray(pack, [src], chunk_size=8), kill_a_worker_once, lambda: False)
    assert killed and killed[0][1] < n // 2, killed  # it died mid-run, with shards still to encode
    pid = killed[0][0]
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert res["errors"] == [] and res["entries_added"] == n
    got, _ = _entries(pack)
    assert [e[2] for e in got] == [f"Fact number {i}: the sample value of item {i} is {i * 7}." for i in range(n)]
    assert [e[3] for e in got] == [f"facts.jsonl:{i + 1}" for i in range(n)]  # provenance per entry


def test_a_cancelled_run_resumes_without_loss_or_duplicates_as_one_undo_step(tmp_path, encoder):
    src = _corpus(tmp_path, 200)
    pack = tmp_path / "d.plugmem"
    committed = {"n": 0}

    def progress(fraction, message="", **metrics):
        committed["n"] = metrics.get("entries", committed["n"])

    with pytest.raises(JobCancelled, match="run again to resume"):
        ray_build(_ray(pack, [src]), progress, lambda: committed["n"] >= 64)
    with Pack.open(pack, readonly=True) as p:
        partial = p.count()
        assert p.import_state(file_key(src)).rows_done == partial
    assert partial == 64  # exactly the shards committed before the stop: 2 of 32
    res = ray_build(_ray(pack, [src]), lambda *a, **k: None, lambda: False)
    assert res["entries_added"] == 200 - 64
    got, _ = _entries(pack)
    assert [e[3] for e in got] == [f"facts.jsonl:{i + 1}" for i in range(200)]
    with Memory.open(pack, encoder) as m:
        assert len(m.index) == 200
        m.undo()  # the whole import, across both runs, is one undo step
        assert m.pack.count() == 0


def test_a_run_killed_with_sigkill_resumes_from_its_last_shard(tmp_path):
    from engine.jobs.runner import JobRunner

    src = _corpus(tmp_path, 400)
    pack = tmp_path / "d.plugmem"
    # the job's own process starts its own local Ray, which dies with it
    cfg = _ray(pack, [src], chunk_size=16, num_cpus=2)
    start_and_kill(JobRunner(tmp_path / "jobs.sqlite"), "ray_build", "engine.jobs.ray_build:ray_build", cfg)
    with Pack.open(pack, readonly=True) as p:
        partial = p.count()
    assert 0 < partial < 400 and partial % 16 == 0
    res = ray_build(_ray(pack, [src], chunk_size=16), lambda *a, **k: None, lambda: False)
    assert res["entries_added"] == 400 - partial
    got, _ = _entries(pack)
    assert [e[3] for e in got] == [f"facts.jsonl:{i + 1}" for i in range(400)]


def test_a_cancelled_local_import_is_finished_on_ray(tmp_path):
    # both kinds of import keep the same per-file checkpoint, so either resumes the other
    src = _corpus(tmp_path, 100)
    pack = tmp_path / "d.plugmem"
    chunks = []  # progress messages of committed chunks ('facts.jsonl: 16 of 100'); validation asks too

    def stop_after_two_chunks() -> bool:
        return len(chunks) >= 2

    with pytest.raises(JobCancelled):
        build_memory({"pack": str(pack), "inputs": [str(src)], "chunk_size": 16},
                     lambda f, m="": chunks.extend([m] if " of 100" in m else []), stop_after_two_chunks)
    res = ray_build(_ray(pack, [src]), lambda *a, **k: None, lambda: False)
    assert res["entries_added"] == 100 - 32 and res["files_imported"] == [str(src)]
    got, _ = _entries(pack)
    assert [e[3] for e in got] == [f"facts.jsonl:{i + 1}" for i in range(100)]
