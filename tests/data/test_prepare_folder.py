"""A seller's folder of images: prepare, validate, quarantine reasons, exit codes, source untouched."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from productgen.common.errors import UserError
from productgen.config import DataConfig, ValidationConfig
from productgen.data.dataset import PreparedDataset
from productgen.data.prepare import prepare, split_of
from productgen.data.validate import validate
from tests.conftest import product_image, run_cli, tree_digest, write_bad_files, write_good_folder


def _cfg(src: Path, out: Path, **kw: object) -> DataConfig:
    return DataConfig(source="folder", input=str(src), out=str(out), mode="RGB", resolution=32, **kw)  # type: ignore[arg-type]


def test_prepare_folder_writes_shards_manifest_and_preview(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 10, "shoes": 10, "shirts": 10})
    res = prepare(_cfg(src, tmp_path / "prep"), show_progress=False)
    assert sum(res.counts.values()) == 30 and res.n_rejected == 0
    assert res.classes == ["bags", "shirts", "shoes"]
    out = tmp_path / "prep"
    for name in ("dataset.json", "manifest.csv", "rejected.csv", "preview.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert set(rows[0]) >= {"id", "source_path", "sha256", "width", "height", "mode", "category", "split"}
    assert {r["mode"] for r in rows} >= {"RGB", "RGBA", "L", "P", "CMYK", "LA"}
    ds = PreparedDataset(out)
    x, y = ds.tensors("train")
    assert x.dtype.is_floating_point is False and x.shape[1:] == (3, 32, 32)
    # each image's split is the content-hash bucket of its bytes; the achieved shares are recorded
    assert all(r["split"] == split_of(r["sha256"], 0, {"train": 0.8, "val": 0.1, "test": 0.1}) for r in rows)
    fractions = ds.meta["split_fractions"]
    for cat in res.classes:
        n_cat = sum(r["category"] == cat for r in rows)
        assert fractions[cat]["n"] == n_cat
        assert fractions[cat]["train"] == sum(r["category"] == cat and r["split"] == "train" for r in rows) / n_cat
    # white padding on a 40x30 source: the top row is background
    assert (x[:, :, 0, :] == 255).all()


def test_split_is_deterministic_and_seeded(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"a": 20, "b": 20})
    splits = []
    for i, seed in enumerate((0, 0, 1)):
        out = tmp_path / f"p{i}"
        prepare(_cfg(src, out, seed=seed), show_progress=False)
        splits.append([(r["id"], r["split"]) for r in csv.DictReader(open(out / "manifest.csv"))])
    assert splits[0] == splits[1]
    assert splits[0] != splits[2]
    h0 = json.loads((tmp_path / "p0/dataset.json").read_text())["content_hash"]
    h1 = json.loads((tmp_path / "p1/dataset.json").read_text())["content_hash"]
    assert h0 == h1


def test_bad_files_quarantined_with_reasons_and_source_untouched(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 6, "shoes": 6})
    expected = write_bad_files(src, "bags", outside=tmp_path / "elsewhere")
    before = tree_digest(src)
    out, report = tmp_path / "prep", tmp_path / "report"
    prepare(_cfg(src, out), show_progress=False)
    result = validate(out, ValidationConfig(out=str(report), min_images_per_category=1))
    assert not result.success
    assert tree_digest(src) == before  # byte for byte, links and folders included
    quarantine = list(csv.DictReader(open(report / "quarantine.csv")))
    reasons = {Path(q["source_path"]).name: q["reason"] for q in quarantine}
    for name, fragment in expected.items():
        assert name in reasons, f"{name} missing from quarantine: {sorted(reasons)}"
        assert fragment in reasons[name], (name, reasons[name])
    md = (report / "report.md").read_text()
    for name in expected:
        assert name in md
    assert "FAILED" in md and (report / "report.html").is_file()
    summary = json.loads((report / "summary.json").read_text())
    failed = {c["check"] for c in summary["checks"] if not c["success"]}
    assert {
        "could not be read or decoded",
        "blank or constant image",
        "duplicate content (same sha256 as another image)",
    } <= failed


def test_thresholds_decide_the_verdict(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 20, "shoes": 20})
    (src / "bags" / "empty.jpg").write_bytes(b"")
    out = tmp_path / "prep"
    prepare(_cfg(src, out), show_progress=False)
    strict = validate(out, ValidationConfig(out=str(tmp_path / "r1"), min_images_per_category=1))
    lenient = validate(
        out, ValidationConfig(out=str(tmp_path / "r2"), min_images_per_category=1, max_rejected_fraction=0.05)
    )
    assert not strict.success and lenient.success
    too_few = validate(
        out, ValidationConfig(out=str(tmp_path / "r3"), max_rejected_fraction=0.05, min_images_per_category=25)
    )
    assert not too_few.success and "too few images in category" in too_few.one_line()


def test_class_imbalance_bound(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"big": 24, "small": 3})
    out = tmp_path / "prep"
    prepare(_cfg(src, out), show_progress=False)
    assert not validate(
        out, ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1, max_class_imbalance=4.0)
    ).success
    assert validate(
        out, ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1, max_class_imbalance=8.0)
    ).success


def test_splits_never_move_when_the_catalog_grows_shrinks_or_is_renamed(tmp_path: Path) -> None:
    """Week 1: 3 x 80 images; week 2: 80 more per category, two week-1 files renamed, five deleted. No week-1 image
    changes split (by content), so a champion is never judged on images it trained on."""
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 80, "shoes": 80, "shirts": 80}, size=(28, 28))
    prepare(_cfg(src, tmp_path / "w1"), show_progress=False)
    week1 = {r["sha256"]: r["split"] for r in csv.DictReader(open(tmp_path / "w1" / "manifest.csv"))}
    for k, cat in enumerate(("bags", "shoes", "shirts")):
        for i in range(80):
            product_image(10_000 + 100 * k + i, (28, 28)).save(src / cat / f"new-{i:03d}.png")
    (src / "bags" / "000.png").rename(src / "bags" / "renamed.png")
    (src / "shoes" / "001.jpg").rename(src / "shoes" / "moved-001.jpg")
    for f in sorted((src / "shirts").iterdir())[:5]:
        f.unlink()
    res = prepare(_cfg(src, tmp_path / "w2"), show_progress=False)
    week2 = {r["sha256"]: r["split"] for r in csv.DictReader(open(tmp_path / "w2" / "manifest.csv"))}
    assert sum(res.counts.values()) == 480 - 5
    kept = set(week1) & set(week2)
    assert len(kept) == 240 - 5
    assert all(week1[h] == week2[h] for h in kept)
    # and the achieved shares stay near 80/10/10 and pass validation's tolerance check
    v = validate(tmp_path / "w2", ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1))
    check = next(c for c in v.checks if "split shares" in c.check)
    assert check.success, check


def test_leakage_between_splits_is_caught(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"a": 10, "b": 10})
    out = tmp_path / "prep"
    prepare(_cfg(src, out), show_progress=False)
    # Simulate a hand-edited manifest where one held-out image's content also sits in train.
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    test_row = next(r for r in rows if r["split"] != "train")
    train_row = next(r for r in rows if r["split"] == "train")
    train_row["sha256"] = test_row["sha256"]
    with open(out / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    res = validate(
        out, ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1, max_duplicate_fraction=0.5)
    )
    assert not res.success
    assert any("leakage" in q["reason"] for q in res.quarantine)


def test_duplicates_share_a_split(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"a": 10})
    for i in range(5):
        (src / "a" / f"dup{i}.png").write_bytes((src / "a" / "000.png").read_bytes())
    out = tmp_path / "prep"
    prepare(_cfg(src, out), show_progress=False)
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    h = next(r["sha256"] for r in rows if r["id"] == "a/000.png")
    copies = [r for r in rows if r["sha256"] == h]
    assert len(copies) == 6 and len({r["split"] for r in copies}) == 1


def test_output_may_not_overwrite_user_data(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"a": 4})
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("precious")
    with pytest.raises(UserError, match="not a prepared dataset"):
        prepare(_cfg(src, other), show_progress=False)
    with pytest.raises(UserError, match="must not overlap"):
        prepare(_cfg(src, src / "out"), show_progress=False)
    assert (other / "notes.txt").read_text() == "precious"


def test_cli_prepare_and_validate_exit_codes(tmp_path: Path) -> None:
    src = tmp_path / "shop"
    write_good_folder(src, {"bags": 6, "shoes": 6})
    expected = write_bad_files(src, "bags", outside=tmp_path / "elsewhere")
    before = tree_digest(src)
    params = tmp_path / "params.yaml"
    params.write_text(
        f"data:\n  source: folder\n  input: {src}\n  out: {tmp_path / 'prep'}\n  mode: RGB\n  resolution: 32\n"
        f"validation:\n  out: {tmp_path / 'report'}\n  min_images_per_category: 1\n"
    )
    p = run_cli("data", "prepare", "--params", str(params), "--quiet")
    assert p.returncode == 0, p.stderr
    assert "rejected" in p.stdout
    v = run_cli("data", "validate", "--params", str(params))
    assert v.returncode == 1
    lines = [ln for ln in v.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: validation FAILED"), v.stderr
    assert "Traceback" not in v.stderr
    assert tree_digest(src) == before
    quarantined = (tmp_path / "report" / "quarantine.csv").read_text()
    assert all(name in quarantined for name in expected)


def test_cli_user_mistakes_are_one_line(tmp_path: Path) -> None:
    cases = [
        ("data", "prepare", "--source", "folder", "--input", str(tmp_path / "missing"), "--out", str(tmp_path / "o")),
        ("data", "prepare", "--source", "catalog", "--input", str(tmp_path / "none.csv"), "--out", str(tmp_path / "o")),
        ("data", "prepare", "--resolution", "1000", "--dry-run"),
        ("data", "validate", "--prepared", str(tmp_path / "nothing")),
        ("data", "info", str(tmp_path / "nothing")),
    ]
    for args in cases:
        p = run_cli(*args, cwd=tmp_path)
        assert p.returncode == 2, (args, p.stdout, p.stderr)
        lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, p.stderr)


def test_unreadable_file_is_a_reason_not_a_crash(tmp_path: Path) -> None:
    from productgen.data.decode import Rejected
    from productgen.data.prepare import _read_bytes
    from productgen.data.sources import SourceItem

    d = tmp_path / "x.png"
    d.mkdir()
    with pytest.raises(Rejected, match="cannot read file"):
        _read_bytes(SourceItem(id="x", category="a", source_path=str(d), path=d), 1 << 20)
