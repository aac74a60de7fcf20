"""CSV and Parquet catalogs in the layout of the public "Fashion Product Images" set (styles.csv + images/)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from productgen.common.errors import UserError
from productgen.config import DataConfig, ValidationConfig
from productgen.data.prepare import prepare
from productgen.data.validate import validate
from tests.conftest import encode, product_image, run_cli, tree_digest

HEADER = [
    "id",
    "gender",
    "masterCategory",
    "subCategory",
    "articleType",
    "baseColour",
    "season",
    "year",
    "usage",
    "productDisplayName",
]


def make_styles(root: Path, n_per_type: int = 5) -> Path:
    """styles.csv with ids, three article types, images/<id>.jpg, and a few broken rows."""
    (root / "images").mkdir(parents=True)
    lines = [",".join(HEADER)]
    next_id = 1000
    for _k, (master, sub, article) in enumerate(
        [("Apparel", "Topwear", "Tshirts"), ("Footwear", "Shoes", "Casual Shoes"), ("Accessories", "Bags", "Handbags")]
    ):
        for _i in range(n_per_type):
            pid = next_id
            next_id += 1
            (root / "images" / f"{pid}.jpg").write_bytes(encode(product_image(pid, (60, 80)), "JPEG", quality=92))
            lines.append(f"{pid},Men,{master},{sub},{article},Blue,Summer,2012,Casual,Nice item {pid}")
    # an id whose image is missing, a path escaping the root, an unknown category, and a malformed line
    lines.append("1999,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Missing image")
    lines.append("../../etc/passwd,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Escape")
    (root / "images" / "2000.jpg").write_bytes(encode(product_image(2000, (60, 80)), "JPEG", quality=92))
    lines.append("2000,Men,Home,Furnishing,Cushion Covers,Red,Fall,2011,Casual,Unknown category")
    lines.append("2001,Men,Apparel,Topwear,Tshirts,Red,Fall,2011,Casual,Name, with, commas")
    (root / "styles.csv").write_text("\n".join(lines) + "\n")
    return root / "styles.csv"


def _cfg(catalog: Path, out: Path, **kw: object) -> DataConfig:
    base = dict(
        source="catalog",
        input=str(catalog),
        out=str(out),
        image_column="id",
        image_pattern="images/{}.jpg",
        category_column="articleType",
        mode="RGB",
        resolution=32,
        categories=["Tshirts", "Casual Shoes", "Handbags"],
    )
    base.update(kw)
    return DataConfig(**base)  # type: ignore[arg-type]


def test_styles_csv_catalog(tmp_path: Path) -> None:
    catalog = make_styles(tmp_path / "fashion")
    before = tree_digest(tmp_path / "fashion")
    res = prepare(_cfg(catalog, tmp_path / "prep"), show_progress=False)
    assert res.classes == ["Casual Shoes", "Handbags", "Tshirts"]
    assert sum(res.counts.values()) == 15
    rejected = {r["id"]: r["reason"] for r in csv.DictReader(open(tmp_path / "prep" / "rejected.csv"))}
    assert "file not found" in rejected["1999"]
    assert "outside the catalog root" in rejected["../../etc/passwd"]
    assert "unknown category 'Cushion Covers'" in rejected["2000"]
    assert any("malformed CSV line" in r for r in rejected.values())
    report = validate(tmp_path / "prep", ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1))
    assert not report.success  # 4 of 19 rows rejected, over the 0% default
    assert tree_digest(tmp_path / "fashion") == before


def test_parquet_catalog_with_paths(tmp_path: Path) -> None:
    import pandas as pd

    root = tmp_path / "cat"
    (root / "pics").mkdir(parents=True)
    rows = []
    for i in range(12):
        name = f"pics/p{i}.png"
        (root / name).write_bytes(encode(product_image(i, (30, 50)), "PNG"))
        rows.append({"path": name, "kind": "bag" if i % 2 else "shoe"})
    pd.DataFrame(rows).to_parquet(root / "catalog.parquet")
    res = prepare(
        DataConfig(
            source="catalog",
            input=str(root / "catalog.parquet"),
            out=str(tmp_path / "prep"),
            image_column="path",
            category_column="kind",
            mode="L",
            resolution=28,
        ),
        show_progress=False,
    )
    assert res.classes == ["bag", "shoe"] and sum(res.counts.values()) == 12 and res.n_rejected == 0
    assert validate(tmp_path / "prep", ValidationConfig(out=str(tmp_path / "r"), min_images_per_category=1)).success


def test_missing_column_is_one_clear_error(tmp_path: Path) -> None:
    catalog = make_styles(tmp_path / "fashion", n_per_type=1)
    with pytest.raises(UserError, match="no column 'category'.*set data.category_column or --category-column"):
        prepare(_cfg(catalog, tmp_path / "prep", category_column="category"), show_progress=False)
    p = run_cli(
        "data",
        "prepare",
        "--source",
        "catalog",
        "--input",
        str(catalog),
        "--image-column",
        "sku",
        "--out",
        str(tmp_path / "prep"),
        cwd=tmp_path,
    )
    assert p.returncode == 2 and p.stderr.startswith("error: ") and "no column 'sku'" in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1
