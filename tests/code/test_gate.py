"""The promotion gate's rules on evaluations as the evaluators return them (metrics + per-category breakdown),
and one place per task: the flow, the CLI, the gate, the predictors and the DVC stages read the task registry."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from productgen import tasks
from productgen.config import RegistryConfig
from productgen.registry.gate import Scored, decide
from tests.conftest import ROOT

CFG = RegistryConfig(psnr_margin=0.05, category_psnr_margin=0.2, gain_db_min=0.5)
SET = "abc:test:300:noise25:-"


def restorer(psnr: float, per_cat: dict[str, float], gain: float = 3.0, version: str = "2") -> Scored:
    cats = {c: {"psnr": v, "gain_db": gain, "n": 100} for c, v in per_cat.items()}
    return Scored(version, {"psnr": psnr, "gain_db": gain, "per_category": cats}, SET, sorted(per_cat))


def test_better_overall_and_in_every_category_is_promoted() -> None:
    v = decide(
        "restore",
        restorer(28.0, {"bags": 28.1, "shoes": 27.9}),
        restorer(27.5, {"bags": 27.6, "shoes": 27.4}, version="1"),
        CFG,
    )
    assert v.promote and "better by 0.5" in v.reason
    assert v.evidence["champion"]["psnr"] == 27.5 and v.evidence["eval_set"] == SET


def test_better_overall_but_worse_in_one_category_is_rejected_naming_it() -> None:
    chal = restorer(28.5, {"bags": 30.0, "shoes": 30.0, "shirts": 25.5})
    champ = restorer(27.5, {"bags": 27.0, "shoes": 27.0, "shirts": 28.5}, version="1")
    v = decide("restore", chal, champ, CFG)
    assert not v.promote and "worse in shirts (psnr 25.5 vs 28.5)" in v.reason
    assert v.evidence["categories"]["worse"] == ["shirts (psnr 25.5 vs 28.5)"]


def test_a_category_within_its_margin_does_not_block() -> None:
    v = decide(
        "restore",
        restorer(28.5, {"bags": 29.0, "shirts": 28.4}),
        restorer(27.5, {"bags": 27.0, "shirts": 28.5}, version="1"),
        CFG,
    )
    assert v.promote


def test_not_better_by_the_margin_is_rejected() -> None:
    v = decide("restore", restorer(27.52, {"bags": 27.52}), restorer(27.5, {"bags": 27.5}, version="1"), CFG)
    assert not v.promote and "margin 0.05" in v.reason


def test_absolute_bar_applies_even_to_the_first_champion() -> None:
    v = decide("restore", restorer(21.9, {"bags": 21.9}, gain=0.1), None, CFG)
    assert not v.promote and "gain_db 0.1 fails the absolute bar (min 0.5; registry.gain_db_min)" in v.reason
    ok = decide("restore", restorer(25.0, {"bags": 25.0}, gain=3.2), None, CFG)
    assert ok.promote and ok.reason.startswith("no champion yet, gain_db 3.2 clears min 0.5")
    off = decide("restore", restorer(21.9, {"bags": 21.9}, gain=0.1), None, RegistryConfig(gain_db_min=None))
    assert off.promote


def test_new_categories_are_judged_by_the_absolute_bar_and_removed_ones_named() -> None:
    chal = Scored(
        "2",
        {
            "psnr": 28.0,
            "gain_db": 3.0,
            "per_category": {
                "bags": {"psnr": 28.0, "gain_db": 3.0, "n": 50},
                "hats": {"psnr": 22.0, "gain_db": 0.2, "n": 20},
            },
        },
        SET,
    )
    champ = Scored("1", {"psnr": 27.0, "per_category": {"bags": {"psnr": 27.0, "n": 50}}}, SET, ["bags", "belts"])
    v = decide("restore", chal, champ, CFG)
    assert not v.promote and "new categories fail the absolute bar: hats" in v.reason
    assert "categories no longer in the data: belts" in v.reason
    assert v.evidence["categories"]["new"] == ["hats"] and v.evidence["categories"]["removed"] == ["belts"]
    chal.metrics["per_category"]["hats"]["gain_db"] = 2.0
    v2 = decide("restore", chal, champ, CFG)
    assert v2.promote and "new categories judged by the absolute bar: hats" in v2.reason


def test_generators_compare_fid_lower_is_better_and_small_categories_on_kid() -> None:
    def gen(fid: float, cats: dict[str, dict[str, float]], version: str) -> Scored:
        return Scored(version, {"fid": fid, "per_category": cats}, SET, sorted(cats))

    champ = gen(40.0, {"bags": {"fid": 50.0, "n": 100}, "belts": {"kid": 0.010, "n": 5}}, "1")
    better = gen(30.0, {"bags": {"fid": 45.0, "n": 100}, "belts": {"kid": 0.012, "n": 5}}, "2")
    assert decide("gan", better, champ, RegistryConfig()).promote
    worse_kid = gen(30.0, {"bags": {"fid": 45.0, "n": 100}, "belts": {"kid": 0.05, "n": 5}}, "3")
    v = decide("gan", worse_kid, champ, RegistryConfig())
    assert not v.promote and "belts (kid 0.05 vs 0.01)" in v.reason
    too_high = gen(350.0, {}, "4")
    assert "fid 350 fails the absolute bar (max 300" in decide("gan", too_high, None, RegistryConfig()).reason


def test_scores_on_different_sets_are_never_compared() -> None:
    other = Scored("1", {"psnr": 20.0, "per_category": {}}, "zzz:test:10:noise25:-")
    v = decide("restore", restorer(28.0, {}), other, CFG)
    assert not v.promote and "score both in the same run" in v.reason


def test_every_task_has_one_registry_entry_that_everything_reads() -> None:
    """The flow's choices, the gate's metric, the predictors and the DVC stages come from tasks.TASKS."""
    import importlib.util
    import sys

    from productgen.registry import promotion as registry

    for spec in tasks.TASKS.values():
        assert registry.primary_metric(spec.name) == (spec.metric, spec.direction)
        assert spec.absolute[1] in ("min", "max") and hasattr(
            RegistryConfig(), f"{spec.absolute[0]}_{spec.absolute[1]}"
        )
    sys.path.insert(0, str(ROOT / "flows"))
    try:
        spec_ = importlib.util.spec_from_file_location("retrain_under_test", ROOT / "flows" / "retrain.py")
        assert spec_ and spec_.loader
        mod = importlib.util.module_from_spec(spec_)
        spec_.loader.exec_module(mod)
    finally:
        sys.path.remove(str(ROOT / "flows"))
    assert mod.RetrainParams(task="pix2pix").task == "pix2pix"
    with pytest.raises(ValueError, match="unknown task 'shoes'"):
        mod.RetrainParams(task="shoes")
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    expected = {t.name: t.quick_profile for t in tasks.TASKS.values() if t.quick_profile}
    # one train-<task> / evaluate-<task> stage pair per task with a quick profile (explicit stages: each has its
    # own derived deps, which DVC's foreach cannot give its items), each running that profile
    profile_of = {
        kind: {
            name.removeprefix(f"{kind}-"): s["cmd"].split("--profile ")[1].split()[0]
            for name, s in stages.items()
            if name.startswith(f"{kind}-") and name.removeprefix(f"{kind}-") in expected
        }
        for kind in ("train", "evaluate")
    }
    assert profile_of["train"] == expected == profile_of["evaluate"]
    for path in expected.values():
        assert (ROOT / path).is_file()
    src = (ROOT / "src" / "productgen" / "models" / "predict.py").read_text() + (
        ROOT / "flows" / "retrain.py"
    ).read_text()
    assert "LOADERS" not in src and '"cyclegan", "style"' not in src  # no parallel task tables left
    assert not (Path(registry.__file__).read_text().count("PRIMARY_METRIC"))


def test_the_first_champion_is_judged_on_the_whole_set_not_on_biased_small_categories() -> None:
    """make run's first GAN (FID 145 on 300 vs 300) had one category at FID > 300 on its 30 images: still promoted."""
    first = Scored(
        "1", {"fid": 145.3, "per_category": {"pullover": {"fid": 320.0, "n": 30}, "bag": {"fid": 180.0, "n": 30}}}, SET
    )
    v = decide("gan", first, None, RegistryConfig())
    assert v.promote and v.reason.startswith("no champion yet, fid 145.3 clears max 300")
