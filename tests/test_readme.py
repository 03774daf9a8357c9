"""The README and the docs cannot rot: every ```python block runs (per file, in order, in one fresh
interpreter) and every ``vestige ...`` line of a ```bash block runs as a command, from an empty folder.
``make`` lines are the set-up commands that CI itself runs (.ci/run runs ``make test``), so they are not
run again here."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
DOCS = sorted((ROOT / "docs").glob("*.md"))


def blocks(path: Path, language: str) -> list[str]:
    return [body for lang, body in FENCE.findall(path.read_text()) if lang == language]


DOCS_WITH_CODE = [p for p in DOCS if blocks(p, "python")]


def commands(path: Path) -> list[str]:
    """The ``vestige`` command lines of the file's bash blocks, without their trailing comments."""
    out = []
    for body in blocks(path, "bash"):
        for line in body.splitlines():
            line = line.strip()
            if line.startswith("vestige "):
                out.append(line.split("  #")[0].strip())
    return out


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["HF_HUB_OFFLINE"] = "1"
    env["TQDM_DISABLE"] = "1"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_python(code: str, cwd: Path, timeout: int) -> subprocess.CompletedProcess:
    script = cwd / "blocks.py"
    script.write_text(code)
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=timeout
    )


def test_the_extraction_sees_the_readme():
    readme = ROOT / "README.md"
    assert len(blocks(readme, "python")) >= 3
    cmds = commands(readme)
    assert [c.split()[1] for c in cmds] == [
        "info",
        "concepts",
        "heads",
        "unlearn",
        "audit",
        "audit",
        "audit",
        "bench",
        "plan",
    ]
    assert "--trainable lora" in cmds[3] and "--benchmark tofu" in cmds[5] and "--benchmark rwku" in cmds[6]
    assert all("#" not in c for c in cmds)


@pytest.mark.slow
def test_readme_python_blocks_run(tmp_path):
    code = "\n\n".join(blocks(ROOT / "README.md", "python"))
    r = _run_python(code, tmp_path, timeout=1500)
    assert r.returncode == 0, r.stderr[-4000:]
    assert "Paris" in r.stdout
    assert re.search(r"^(removed|suppressed|inconclusive)$", r.stdout, re.M), r.stdout[-2000:]
    assert (tmp_path / "out" / "audit" / "audit.json").exists()
    assert (tmp_path / "out" / "oracle" / "oracle.json").exists()


@pytest.mark.slow
def test_readme_commands_run(tmp_path):
    """The CLI tour in order, in one folder (the audits read the adapter the unlearn line wrote). The README's
    paths are relative to the repository root (``tests/fixtures/...``, the benchmark fixtures in their
    published schemas): the folder links to the repository's ``tests``."""
    vestige = Path(sys.executable).parent / "vestige"
    (tmp_path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    for line in commands(ROOT / "README.md"):
        argv = shlex.split(line)
        r = subprocess.run(
            [str(vestige), *argv[1:]], capture_output=True, text=True, cwd=tmp_path, env=_env(), timeout=1200
        )
        assert r.returncode == 0, (line, r.stderr[-4000:])
        assert "Traceback" not in r.stderr, line
    for path in ("concepts/concepts.json", "heads/heads.json", "npo/unlearn.json", "audit/audit.json"):
        assert (tmp_path / "out" / path).exists(), path
    assert (tmp_path / "out" / "npo" / "adapter_config.json").exists()  # the LoRA run saved an adapter
    for bench, concept in (("tofu", "TOFU forget01"), ("rwku", "RWKU Marisol Venn forget")):
        report = json.loads((tmp_path / "out" / bench / "audit.json").read_text())
        assert report["concept"] == concept and report["verdict"] == "inconclusive"
        # SmolLM2 never read these invented authors: the audit must say there is nothing to forget
        assert any("nothing to forget" in r for r in report["reasons"]), report["reasons"]
        # so the weight attacks were skipped, with a note, and the config says what ran
        assert any("nothing to forget, so the attacks" in n for n in report["notes"]), report["notes"]
        assert report["config"]["relearn_steps"] == 0 and report["config"]["quantize_bits"] == 0
    assert (tmp_path / "out" / "bench" / "bench.json").exists()


@pytest.mark.slow
@pytest.mark.parametrize("page", DOCS_WITH_CODE, ids=[p.name for p in DOCS_WITH_CODE])
def test_docs_python_blocks_run(page, tmp_path):
    code = "\n\n".join(blocks(page, "python"))
    r = _run_python(code, tmp_path, timeout=600)
    assert r.returncode == 0, r.stderr[-4000:]


def test_docs_exist_and_point_at_nothing_outside_the_repository():
    assert {"README.md", "concept_vectors.md", "audit.md", "unlearning.md"} <= {p.name for p in DOCS}
    for page in [ROOT / "README.md", *DOCS]:
        text = page.read_text()
        # no pointer at the team's notes outside the repository (the shared folder beside it, or its two
        # notes by name): the docs must stand on their own
        outside = ["../shared", *(f"{stem.upper()}.md" for stem in ("design", "references"))]
        assert not [o for o in outside if o in text], page.name
