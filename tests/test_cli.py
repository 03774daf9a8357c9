"""The command line: info prints the summary and a completion; errors are problem / cause / fix."""

from __future__ import annotations

import json

from analyses.cli import main


def test_info_json(capsys, smol):
    assert main(["info", "smollm2-135m", "--prompt", "The capital of France is", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_layers"] == 30 and info["n_kv_heads"] == 3 and info["d_mlp"] == 1536
    assert "Paris" in info["completion"]
    assert info["n_params"] > 100_000_000


def test_cli_error_is_clear(capsys):
    assert main(["info", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model spec 'no-such-model'" in err and "fix:" in err
