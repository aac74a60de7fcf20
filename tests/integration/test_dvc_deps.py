"""dvc.yaml declares every dependency its stages' commands have (issue 18): recomputed from the code by
:mod:`productgen.pipeline.dvc_deps` (import closure of each command and its task's registry refs, the profiles
and files it reads, the params keys it reads) and compared with what dvc.yaml lists. Offline, no DVC run."""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path

import pytest
import yaml

from productgen.pipeline import dvc_deps
from tests.conftest import ROOT


@pytest.fixture(scope="module")
def derived() -> dict[str, dvc_deps.StageDeps]:
    return dvc_deps.derive(ROOT)


def test_dvc_yaml_declares_every_derived_dependency(derived: dict[str, dvc_deps.StageDeps]) -> None:
    problems = dvc_deps.missing(ROOT, derived) + dvc_deps.champion_problems(ROOT)
    assert not problems, (
        "dvc.yaml lacks dependencies its commands have; run `python -m productgen.pipeline.dvc_deps --write`:\n"
        + "\n".join(problems)
    )


def test_every_stage_that_runs_project_code_is_derived(derived: dict[str, dvc_deps.StageDeps]) -> None:
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    assert set(derived) == {n for n, s in stages.items() if "productgen" in str(s.get("cmd", ""))}
    assert {f"champion-{t}" for t in dvc_deps.champion_cards(ROOT)} <= set(derived)


def test_per_task_closures(derived: dict[str, dvc_deps.StageDeps]) -> None:
    vae, cyclegan = set(derived["train-vae"].code), set(derived["train-cyclegan"].code)
    assert "src/productgen/training/vae_task.py" in vae and "src/productgen/models/vae.py" in vae
    assert not {f for f in vae if "translate" in f and "/cli/" not in f}, "train-vae depends on translation code"
    assert (
        "src/productgen/training/translate_task.py" in cyclegan
        and "src/productgen/training/vae_task.py" not in cyclegan
    )
    assert "flows/profiles/quick-cpu.yaml" in vae and "flows/profiles/quick-cpu-cyclegan.yaml" in cyclegan
    # evaluate stages: the evaluator and the task's model loader, not the training code of other tasks
    ev = set(derived["evaluate-restore"].code)
    assert {"src/productgen/evaluation/restoration.py", "src/productgen/models/restore.py"} <= ev
    assert "src/productgen/training/style_task.py" not in ev


def test_params_narrowed_to_what_each_stage_reads(derived: dict[str, dvc_deps.StageDeps]) -> None:
    vae = derived["train-vae"].params
    assert {"train", "vae", "data.out"} <= set(vae["params.yaml"])
    assert not {"translate", "style", "gan", "restore"} & set(vae["params.yaml"])
    assert vae["flows/profiles/quick-cpu.yaml"] and "gan" not in vae["flows/profiles/quick-cpu.yaml"]
    assert {"gan", "train"} <= set(derived["train"].params["params.yaml"])  # gan.lr_g: dvc exp run -S works
    assert "style.style_image" in derived["evaluate-style"].params["params.yaml"]


def test_params_reach_every_read_through_resolved_calls() -> None:
    """The params scanner follows the Params object into every function it is passed to; the only calls it
    cannot resolve are the task registry's (spec.build / spec.evaluate), which the derivation adds by name."""
    from productgen import tasks

    project = dvc_deps.Project(ROOT)
    for spec in tasks.TASKS.values():
        scanner = dvc_deps.ParamsScanner(project)
        for ref in ("productgen.cli.train:_train_command", "productgen.cli.evaluate:evaluate_cmd", spec.builder):
            scanner.scan(*ref.split(":"))
        left = {u.rsplit(" ", 1)[1] for u in scanner.unresolved}
        assert left <= {"spec.build", "spec.evaluate"}, (spec.name, scanner.unresolved)


def _tiny_project(tmp_path: Path, files: dict[str, str]) -> dvc_deps.Project:
    for rel, text in files.items():
        f = tmp_path / "src/productgen" / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(textwrap.dedent(text))
    return dvc_deps.Project(tmp_path)


def test_closure_rules(tmp_path: Path) -> None:
    project = _tiny_project(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": """
                from typing import TYPE_CHECKING
                from productgen import b
                if TYPE_CHECKING:
                    from productgen import typing_only
                def run():
                    from .pkg.c import thing
                    return thing
                """,
            "b.py": "import os\n",
            "typing_only.py": "",
            "pkg/__init__.py": "",
            "pkg/c.py": "from productgen.pkg import d\nthing = 1\n",
            "pkg/d.py": "",
            "unused.py": "",
        },
    )
    names = dvc_deps.full_closure(project, ["productgen.a"])
    assert names == {
        "productgen",
        "productgen.a",
        "productgen.b",
        "productgen.pkg",
        "productgen.pkg.c",
        "productgen.pkg.d",
    }
    # import time only: the function's import is not run
    assert dvc_deps.module_level_closure(project, ["productgen.a"]) == {"productgen", "productgen.a", "productgen.b"}


def test_a_style_image_given_as_a_path_becomes_a_dependency(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "flows/profiles", root / "flows/profiles")
    shutil.copy(ROOT / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["style"]["style_image"] = "styles/house.png"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "styles").mkdir()
    (root / "styles/house.png").write_bytes(b"\x89PNG")
    derived = dvc_deps.derive(root)
    assert "styles/house.png" in derived["evaluate-style"].code
    assert "styles/house.png" not in derived["train-vae"].code
    problems = dvc_deps.missing(root, derived)
    assert "stage evaluate-style: missing code dependency styles/house.png" in problems
    # --write adds it, and the check passes again
    assert dvc_deps.main(["--root", str(root), "--write"]) == 0
    assert dvc_deps.missing(root) == []


def test_a_run_folder_a_profile_names_is_not_a_dependency_where_git_ignores_it(tmp_path: Path) -> None:
    """A champion's profile names its run folder (train.out, evaluate.model); that folder exists only on the
    machine that trained it, so it must not become a dependency there and be absent from every other clone."""
    import subprocess

    from productgen.config import profile_path

    root = tmp_path / "repo"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "flows/profiles", root / "flows/profiles")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, root / f)
    card = yaml.safe_load((ROOT / "champions/vae/card.json").read_text())
    run = yaml.safe_load((ROOT / profile_path(card["profile"])).read_text())["evaluate"]["model"]
    (root / run).mkdir(parents=True)
    (root / run / "config.json").write_text("{}")
    (root / "champions/vae").mkdir(parents=True)
    for f in ("card.json", "config.json"):
        shutil.copy(ROOT / "champions/vae" / f, root / "champions/vae" / f)
    # outside git (nothing known to be ignored) the existing folder is taken as a project file ...
    assert run in dvc_deps.derive(root)["champion-vae"].code
    # ... in a work tree that ignores it, it is a run output and not a dependency
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / ".gitignore").write_text("/" + run.split("/")[0] + "/\n")
    assert run not in dvc_deps.derive(root)["champion-vae"].code
    assert profile_path(card["profile"]).as_posix() in dvc_deps.derive(root)["champion-vae"].code


def test_a_new_import_is_a_missing_dependency_until_written(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "src", root / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(ROOT / "flows/profiles", root / "flows/profiles")
    for f in ("dvc.yaml", "params.yaml"):
        shutil.copy(ROOT / f, root / f)
    (root / "src/productgen/training/helper_new.py").write_text("X = 1\n")
    vae_task = root / "src/productgen/training/vae_task.py"
    vae_task.write_text(
        vae_task.read_text() + "\n\ndef _uses_helper():\n    from productgen.training import helper_new\n"
    )
    problems = dvc_deps.missing(root)
    assert "stage train-vae: missing code dependency src/productgen/training/helper_new.py" in problems
    assert not any("train-cyclegan" in p and "helper_new" in p for p in problems)


def test_a_stage_depends_on_the_cli_module_it_runs_and_no_other(derived: dict[str, dvc_deps.StageDeps]) -> None:
    """The CLI imports a command's module only when it runs, so an edit to `productgen web` or `registry`
    re-runs no stage, and an edit to `productgen train` re-runs the training stages and not the evaluations."""
    for name, deps in derived.items():
        cli = {f for f in deps.code if "/cli/" in f}
        assert not cli & {"src/productgen/cli/web.py", "src/productgen/cli/registry.py"}, name
    assert "src/productgen/cli/train.py" in derived["train-vae"].code
    assert "src/productgen/cli/train.py" not in derived["evaluate-vae"].code
    assert "src/productgen/cli/data.py" not in derived["train-vae"].code


def test_what_a_stage_command_imports_when_it_runs_is_declared(derived: dict[str, dvc_deps.StageDeps]) -> None:
    """The static closure checked against a real run of the stage's command line (with --dry-run, which goes
    through the same CLI and config code and stops before training): every project module it imports is a dep."""
    import subprocess
    import sys

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in ("train-vae", "evaluate-cyclegan"):
        words = dvc_deps._split_cmd(stages[name]["cmd"])[0]
        assert words[0] == "productgen", words
        code = (
            "import sys; from productgen.cli import app; "
            f"app({words[1:] + ['--dry-run']!r}, standalone_mode=False); "
            "print(' '.join(sorted(m.__file__ for n, m in list(sys.modules.items()) "
            "if n.split('.')[0] == 'productgen' and getattr(m, '__file__', None))))"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
        assert proc.returncode == 0, proc.stderr
        files = {Path(f).resolve().relative_to(ROOT).as_posix() for f in proc.stdout.strip().splitlines()[-1].split()}
        assert "src/productgen/cli/__init__.py" in files
        assert files <= set(derived[name].code), (
            f"stage {name}: not declared: {sorted(files - set(derived[name].code))}"
        )
