"""`plugmem patch ...`, `--patch` on predict / eval-edits and `plugmem compare`, on the tiny
reader saved as a model folder (human output and --json)."""
from __future__ import annotations

import json

import pytest

from .test_evaluate import ANIMALS, cli_models, run_cli, write_jsonl, zoo  # noqa: F401 - fixtures

PROMPT = "Zebra facts: the capital of Zebraland is"
FAST = ["--layers", "0", "1", "--delta", "0.05", "--lr", "0.02", "--steps", "12"]


def test_create_show_list_apply_predict_remove(cli_models, tmp_path, capsys):  # noqa: F811
    reader, _ = cli_models
    out_dir = tmp_path / "zebra"
    code, out, err = run_cli(capsys, "patch", "create", "--prompt", PROMPT, "--answer", "Porto-Novo", "--paraphrase",
                             "Zebraland's capital is", "--out", str(out_dir), "--reader", reader, *FAST)
    assert code == 0, err
    assert f"patch zebra written to {out_dir}: 1 fact(s), 2 tensor(s)" in out and "efficacy 100%" in out
    assert sorted(p.name for p in out_dir.iterdir()) == ["config.json", "delta.safetensors"]

    code, out, err = run_cli(capsys, "patch", "show", str(out_dir))
    assert code == 0 and "weight patch zebra" in out and f"{PROMPT} -> Porto-Novo  [command line]" in out
    assert "delta 0.05" in out
    code, out, _ = run_cli(capsys, "patch", "list", str(tmp_path))
    assert code == 0 and "zebra" in out and "0 active" in out

    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--json")
    assert code == 0, err
    assert not json.loads(out)["answer"].strip().startswith("Porto")
    code, out, err = run_cli(capsys, "patch", "apply", str(out_dir), "--reader", reader)
    assert code == 0 and "applied zebra (number 1 of 1 active)" in out, err
    code, out, _ = run_cli(capsys, "patch", "list", str(tmp_path))
    assert "1 active" in out and "1. zebra" in out
    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--patch", "active", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["answer"].strip().startswith("Porto-Novo") and rec["weight_patches"] == ["zebra"]
    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--patch", str(out_dir))
    assert code == 0 and "weight patches: zebra" in out and "Porto-Novo" in out

    code, out, err = run_cli(capsys, "patch", "apply", str(out_dir), "--reader", reader)
    assert code == 2 and "already active" in err
    code, out, err = run_cli(capsys, "patch", "remove", "zebra", "--reader", reader)
    assert code == 0 and "removed zebra; 0 patch(es) still active" in out
    code, out, err = run_cli(capsys, "patch", "remove", "zebra", "--reader", reader)
    assert code == 2 and "not an active patch" in err


@pytest.mark.parametrize("args, message", [
    (["--prompt", "", "--answer", "X"], "field 'prompt' must be a non-empty string"),
    (["--prompt", "Q is", "--answer", " "], "field 'answer' must be a non-empty string"),
    (["--prompt", "Q is", "--answer", "X", "--delta", "0"], "'delta' must be a number in (0, 0.1]"),
    (["--prompt", "Q is", "--answer", "X", "--delta", "7"], "'delta' must be a number in (0, 0.1]"),
    (["--prompt", "Q is", "--answer", "X", "--layers", "5"], "field 'layers' names block 5, but the reader has blocks 0 to 1"),
    (["--prompt", "Q is", "--answer", "X", "--targets", "mlp.w9"], "unknown tensor 'mlp.w9'"),
    (["--prompt", "Q is", "--answer", "X", "--neurons", "-2"], "field 'neurons' must be a whole number from 0"),
    (["--prompt", "Q is", "--answer", "X", "--neurons", "4", "--targets", "self_attn.v_proj"],
     "field 'neurons' (4) selects MLP neurons"),
    (["--prompt", "Q is", "--answer", "X", "--preserve", "1"], "field 'preserve' must be a number in [0, 0.9999]"),
    ([], "patch create needs a fact"),
    (["--facts", "{tmp}/bad.jsonl"], "bad.jsonl:1: field 'new' must be a non-empty string"),
])
def test_create_refuses_bad_input_in_one_line(cli_models, tmp_path, capsys, args, message):  # noqa: F811
    reader, _ = cli_models
    (tmp_path / "bad.jsonl").write_text('{"prompt": "Q is", "new": ""}\n')
    args = [x.replace("{tmp}", str(tmp_path)) for x in args]
    code, out, err = run_cli(capsys, "patch", "create", *args, "--out", str(tmp_path / "p"), "--reader", reader)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p").exists()


def test_create_with_a_neuron_mask_writes_and_shows_it(cli_models, tmp_path, capsys):  # noqa: F811
    from safetensors.torch import load_file

    reader, _ = cli_models
    out_dir = tmp_path / "masked"
    code, out, err = run_cli(capsys, "patch", "create", "--prompt", PROMPT, "--answer", "Porto-Novo", "--neurons", "4",
                             "--out", str(out_dir), "--reader", reader, *FAST)
    assert code == 0, err
    assert json.loads((out_dir / "config.json").read_text())["config"]["neurons"] == 4
    for name, d in load_file(out_dir / "delta.safetensors").items():
        assert 0 < int((d != 0).any(0).sum()) <= 4, name  # down_proj columns: the 4 neurons only
    code, out, err = run_cli(capsys, "patch", "show", str(out_dir))
    assert code == 0 and "neurons per fact 4, preserve 0" in out
    code, out, err = run_cli(capsys, "patch", "create", "--prompt", PROMPT, "--answer", "Porto-Novo", "--preserve",
                             "0.9", "--out", str(tmp_path / "kept"), "--reader", reader, *FAST)
    assert code == 0, err
    assert json.loads((tmp_path / "kept" / "config.json").read_text())["config"]["preserve"] == 0.9


def test_predict_refuses_a_bad_patch_folder(cli_models, tmp_path, capsys):  # noqa: F811
    reader, _ = cli_models
    (tmp_path / "junk").mkdir()
    code, out, err = run_cli(capsys, "predict", PROMPT, "--reader", reader, "--patch", str(tmp_path / "junk"))
    assert code == 2 and "not a weight patch folder: no config.json" in err


def test_compare_prints_a_table_per_mechanism(cli_models, zoo, tmp_path, capsys):  # noqa: F811
    reader, branch = cli_models
    pack = str(zoo.pack.path)
    zoo.close()
    edits = write_jsonl(tmp_path / "e.jsonl", [
        {"old_text": "Zebra facts: Rome Rome Rome Rome Rome", "new_text": "Zebra facts: Oslo Oslo Oslo Oslo Oslo",
         "prompt": "Zebra facts:", "new": "Oslo", "paraphrase": "Facts about the zebra:", "subject": "Zebra"},
    ])
    loc = write_jsonl(tmp_path / "loc.jsonl", [{"prompt": f"{a} facts:", "answer": w, "subject": a}
                                               for a, w in ANIMALS.items()])
    code, out, err = run_cli(capsys, "compare", edits, "--memory", pack, "--locality", loc, "-k", "1", "--reader",
                             reader, "--branch", branch, "--mechanisms", "dpm,patch_batch,plugins",
                             "--layers", "0", "1", "--delta", "0.05", "--steps", "12")
    assert code == 0, err
    assert "memory edit (dpm)" in out and "weight patch (batch)" in out and "reversible exactly" in out
    assert "memory edit + plugins: skipped (no knowledge plugin plugged)" in out
    code, out, err = run_cli(capsys, "compare", edits, "--memory", pack, "--reader", reader, "--mechanisms", "magic")
    assert code == 2 and "--mechanisms: magic: choose from" in err


def test_the_job_writes_a_patch_and_a_cancelled_job_writes_nothing(cli_models, tmp_path):  # noqa: F811
    from engine.mechanisms.weight_patches import load
    from engine.mechanisms.weight_patches.train import run
    from engine.progress import JobCancelled
    from engine.reader import load_reader

    reader, _ = cli_models
    cfg = {"reader": reader, "facts": [{"prompt": PROMPT, "answer": "Porto-Novo"}], "out": str(tmp_path / "job"),
           "patch": {"layers": [0, 1], "delta": 0.05, "lr": 0.02, "steps": 12}}
    res = run(cfg, progress=lambda f, m="", **k: None, should_stop=lambda: False)
    assert res["out"] == str(tmp_path / "job") and res["metrics"]["efficacy"] == 1.0
    assert load(tmp_path / "job", load_reader(reader)).facts[0].answer == "Porto-Novo"
    with pytest.raises(JobCancelled):
        run({**cfg, "out": str(tmp_path / "stopped")}, should_stop=lambda: True)
    assert not (tmp_path / "stopped").exists()
    with pytest.raises(ValueError, match="patch job: field 'patch': field 'delta' must be a number"):
        run({**cfg, "patch": {"delta": "big"}})
    with pytest.raises(ValueError, match="patch job: field 'patch': field 'neurons' must be a whole number"):
        run({**cfg, "out": str(tmp_path / "bad"), "patch": {**cfg["patch"], "neurons": -3}})
    assert not (tmp_path / "bad").exists()
    res = run({**cfg, "out": str(tmp_path / "masked"), "patch": {**cfg["patch"], "neurons": 4}})
    assert load(tmp_path / "masked", load_reader(reader)).config.neurons == 4
    assert all(v == 4 for v in res["metrics"]["neurons_trained"].values())
