"""Queued experiments on the real dvc.yaml at tiny settings (docs/experiments.md): a pair queued with
`dvc exp run --queue -S gan.lr_g=...` and run with `--run-all`, then `dvc exp show` and `dvc plots diff` against
the committed baseline. (`dvc exp run -S` itself and `dvc metrics diff`: test_dvc.py.)"""

from __future__ import annotations

import json
from pathlib import Path

from tests.integration.test_dvc import repo, sh  # noqa: F401 - the fixture: real dvc.yaml, tiny profile, 15 images


def _experiments(rows: list[dict]) -> dict[str, dict]:
    found = {}
    for row in rows:
        for e in row.get("experiments") or []:
            for rev in e.get("revs") or []:
                data = rev.get("data") or {}
                found[data.get("name") or e.get("name")] = data
    return found


def test_queued_pair_compared_with_the_baseline(repo: Path) -> None:  # noqa: F811
    sh("dvc", "repro", "evaluate", cwd=repo)
    sh("git", "add", "-A", cwd=repo)
    sh("git", "commit", "-qm", "baseline", cwd=repo)

    for name, lr in (("lr-g-1e-4", "0.0001"), ("lr-g-1e-3", "0.001")):
        queued = sh("dvc", "exp", "run", "evaluate", "--queue", "-n", name, "-S", f"gan.lr_g={lr}", cwd=repo)
        assert f"Queued experiment '{name}'" in queued.stdout + queued.stderr
    sh("dvc", "exp", "run", "--run-all", "-j", "1", cwd=repo)

    exps = _experiments(json.loads(sh("dvc", "exp", "show", "--json", cwd=repo).stdout))
    for name, lr in (("lr-g-1e-4", 0.0001), ("lr-g-1e-3", 0.001)):
        assert exps[name]["params"]["params.yaml"]["data"]["gan"]["lr_g"] == lr
        assert exps[name]["metrics"]["artifacts/dvc/eval/metrics.json"]["data"]["fid"] > 0
    table = sh("dvc", "exp", "show", "--only-changed", "--csv", cwd=repo).stdout  # the table, every column
    assert "gan.lr_g" in table.splitlines()[0] and "lr-g-1e-4" in table and "lr-g-1e-3" in table

    plots = sh("dvc", "plots", "diff", "HEAD", "lr-g-1e-4", "lr-g-1e-3", "--json", cwd=repo).stdout
    assert "loss_g" in plots and "lr-g-1e-4" in plots and "lr-g-1e-3" in plots
