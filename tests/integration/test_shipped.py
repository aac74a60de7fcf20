"""Shipped champions (champions/<task>): a fresh clone's commands use them when nothing was trained, and
``productgen registry ship`` makes them champions in a real MLflow store, once."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from productgen.registry import shipped
from tests.conftest import BIN, run_cli

CARD = {
    "summary": "tiny test GAN",
    "protocol": "none (test)",
    "figure": "FID 50.0",
    "profile": "tests",
    "steps": 2,
    "device": "cpu",
    "train_time": "1 s",
    "eval_set": {"content_hash": "c" * 64, "split": "test"},
}


@pytest.fixture(scope="module")
def trained(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ship") / "run"
    p = run_cli("train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(out), "-q", "--no-track")
    assert p.returncode == 0, p.stderr
    return out / "model"


def test_generate_falls_back_to_the_shipped_champion_and_ship_registers_it_once(
    trained: Path, params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PRODUCTGEN_CHAMPIONS", "champions")  # not the repository's own shipped champions
    none = run_cli("generate", "--n", "2", "--out", "g.png", cwd=tmp_path)
    assert none.returncode != 0 and "Traceback" not in none.stderr  # nothing trained, nothing shipped: one line

    dest = shipped.package(
        "gan", trained, {"fid": 50.0, "n_real": 100, "n_fake": 100}, CARD, keep=("generator", "discriminator")
    )
    assert dest == Path("champions/gan") and not (dest / "generator_raw.safetensors").exists()
    card = json.loads((dest / "card.json").read_text())
    assert card["metrics"]["fid"] == 50.0 and len(card["weights_sha256"]) == 64
    from safetensors.torch import load_file

    assert load_file(str(dest / "generator.safetensors"))["fc.weight"].dtype.itemsize == 2  # stored as fp16
    assert card["weights_dtype"] == "float16" and card["fp16_agreement"]["max_grey_levels"] <= 8

    p = run_cli("generate", "--n", "2", "--out", "g.png", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert "using the shipped champion champions/gan (tiny test GAN)" in p.stderr and (tmp_path / "g.png").is_file()

    (tmp_path / "artifacts/train/gan").mkdir(parents=True)  # a model trained here wins over the shipped one
    (tmp_path / "artifacts/train/gan/model").symlink_to(trained)
    own = run_cli("generate", "--n", "2", "--out", "g2.png", cwd=tmp_path)
    assert own.returncode == 0 and "shipped" not in own.stderr

    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db"}

    def ship(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "productgen"), "registry", "ship", *args, "--params", str(params)],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    first = ship()
    assert first.returncode == 0, first.stderr
    assert "productgen-gan v1: champion (FID 50.0)" in first.stdout
    again = ship("gan")
    assert again.returncode == 0 and "already registered as version 1" in again.stdout
    missing = ship("restore")
    assert missing.returncode != 0 and "no shipped champion" in missing.stderr and "Traceback" not in missing.stderr
    table = run_cli("registry", "ship", "--table", cwd=tmp_path)
    assert "| gan | none (test) | FID 50.0 |" in table.stdout
