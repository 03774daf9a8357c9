"""The package as a user installs it: no import cycle, ``probes`` free of ``analyses``, every module and
bundled data file in the wheel, and the wheel working outside the checkout."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("probes", "analyses")


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(f.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = f
    return mods


def _imports(name: str, path: Path, mods: dict[str, Path]) -> set[str]:
    """The project modules ``name`` imports, at any depth of the file (lazy imports count), except under
    ``if TYPE_CHECKING:``. ``from pkg import sub`` counts as importing ``pkg.sub`` only."""
    out: set[str] = set()
    is_pkg = path.name == "__init__.py"

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            t = node.test
            if getattr(t, "id", None) == "TYPE_CHECKING" or getattr(t, "attr", None) == "TYPE_CHECKING":
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_Import(self, node: ast.Import) -> None:
            out.update(a.name for a in node.names)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in mods]
            if len(subs) < len(node.names):
                out.add(mod)
            out.update(subs)

    Visitor().visit(ast.parse(path.read_text()))
    return {m for m in out if m in mods and m != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_and_probes_never_imports_analyses():
    mods = _modules()
    graph = {m: _imports(m, p, mods) for m, p in mods.items()}
    assert len(graph) > 40 and graph["analyses.audit.runner"]  # the walk saw the tree
    assert _cycles(graph) == []
    leaks = {m: sorted(d for d in deps if d.startswith("analyses")) for m, deps in graph.items()}
    assert {m: d for m, d in leaks.items() if m.startswith("probes") and d} == {}


def _pyproject() -> dict:
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_and_data_folder_is_declared():
    st = _pyproject()["tool"]["setuptools"]
    declared = set(st["packages"])
    on_disk = {
        ".".join(d.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for d in [ROOT / pkg, *(ROOT / pkg).rglob("*")]
        if d.is_dir() and any(d.glob("*.py"))
    }
    assert on_disk <= declared, sorted(on_disk - declared)
    data = {
        f"vestige_data.{d.name}" for d in (ROOT / "data").iterdir() if d.is_dir() and d.name != "__pycache__"
    }
    assert data <= declared and data <= set(st["package-data"]), sorted(data - declared)
    assert st["package-dir"] == {"vestige_data": "data"}
    assert _pyproject()["project"]["license"] == "MIT"  # an SPDX string, not the deprecated table


def _data_files() -> set[str]:
    keep = {".json", ".txt", ".csv", ".md"}
    return {
        str(Path("vestige_data") / f.relative_to(ROOT / "data"))
        for f in (ROOT / "data").rglob("*")
        if f.is_file() and f.suffix in keep
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # build from a copy: setuptools leaves build/ in the source folder, and a stale build/lib would ship
    # modules that no longer exist
    src = out / "src"
    skip = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "vestige-out", "out")
    shutil.copytree(ROOT, src, ignore=skip)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-w",
            str(out),
            str(src),
        ],
        capture_output=True,
        text=True,
        cwd=out,
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # the project's own metadata raises no warning (setuptools' license and package-data checks)
    assert "Warning" not in build.stderr and "deprecated" not in build.stderr.lower(), build.stderr[-3000:]
    (whl,) = out.glob("vestige-*.whl")
    return whl


def test_wheel_holds_every_module_and_data_file(wheel):
    import zipfile

    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {str(p.relative_to(ROOT)) for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert _data_files() <= names, sorted(_data_files() - names)
    assert "vestige_data/concepts/concepts.json" in names


def test_wheel_installs_and_runs_outside_the_checkout(wheel, tmp_path):
    """Install the wheel (not editable) into a fresh venv whose only extra path is this environment's
    site-packages (for torch and the other dependencies, without their .pth hooks, so the checkout's
    editable install stays out), then run the CLI and load the bundled data from another folder."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    py = env_dir / "bin" / "python"
    site = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["HF_HUB_OFFLINE"] = "1"
    inst = subprocess.run(
        [str(py), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert inst.returncode == 0, inst.stderr[-3000:]
    vestige = env_dir / "bin" / "vestige"
    for argv in (
        [str(vestige), "--help"],
        [str(vestige), "bench", "--help"],
        [str(vestige), "unlearn", "--help"],
    ):
        r = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=tmp_path)
        assert r.returncode == 0, (argv, r.stderr[-3000:])
        assert "usage: vestige" in r.stdout
    probe = (
        "import probes, analyses.cli\n"
        "from probes.data import DATA_DIR, load_concepts\n"
        "from probes.linear import load_probe_dataset\n"
        "from probes.retrieval import load_needles, NEEDLES_FILE\n"
        "print(probes.__file__); print(DATA_DIR); print(len(load_concepts()))\n"
        "print(len(load_needles(NEEDLES_FILE))); print(len(load_probe_dataset('city_country').labels))\n"
    )
    r = subprocess.run([str(py), "-c", probe], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    module_file, data_dir, n_concepts, n_needles, n_items = r.stdout.split()
    assert module_file.startswith(site) and data_dir.startswith(site), (module_file, data_dir)
    assert not module_file.startswith(str(ROOT))
    assert int(n_concepts) == 52 and int(n_needles) > 0 and int(n_items) == 240
