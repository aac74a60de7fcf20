"""Where product images come from: the built-in dataset, a folder per category, or a CSV/Parquet catalog.

Each source yields :class:`SourceItem` records. Problems known before decoding (a path escaping the catalog
root, a broken symlink, an unknown category) travel with the item as ``problem`` so that they end up in the
quarantine list with the rest; only a wrong argument (a missing folder or column) is an immediate error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from productgen.common.errors import UserError
from productgen.config import DataConfig

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp"})


@dataclass
class SourceItem:
    """One candidate image. ``path`` is set for files, ``pixels`` for the built-in arrays."""

    id: str
    category: str
    source_path: str
    path: Path | None = None
    pixels: np.ndarray | None = None
    official_split: str | None = None
    problem: str | None = None


@dataclass
class SourceListing:
    """All candidates of a source, plus what was skipped without being an image candidate."""

    items: list[SourceItem]
    ignored: list[str]
    description: str


NAME_MAX = 255  # bytes per path component on Linux/macOS file systems


def _check_inside(root: Path, path: Path) -> str | None:
    """Return a reason if ``path`` is a broken link, not a file, or resolves outside ``root``.

    Any error from the file system (a 300-character name is ENAMETOOLONG) is this row's problem, never the
    whole prepare's."""
    long = next((part for part in path.parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None:
        return f"file name of {len(os.fsencode(long))} bytes is over the {NAME_MAX}-byte limit: {long[:40]}..."
    try:
        return _check_inside_fs(root, path)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        return f"cannot access the file ({reason})"


def _check_inside_fs(root: Path, path: Path) -> str | None:
    if path.is_symlink() and not path.exists():
        return "broken symlink (its target does not exist)"
    if not path.exists():
        return "file not found"
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        return f"resolves outside the catalog root {root}"
    if not resolved.is_file():
        return "not a regular file"
    return None


def from_folder(root_arg: Path) -> SourceListing:
    """Images under ``root/<category>/...``; category = first-level subfolder name."""
    if not root_arg.is_dir():
        raise UserError(f"{root_arg}: not a folder (expected one subfolder of images per category)")
    root = root_arg.resolve()
    items: list[SourceItem] = []
    ignored: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel_dir = Path(dirpath).relative_to(root)
        for name in sorted(filenames):
            rel = (rel_dir / name).as_posix()
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                ignored.append(rel)
                continue
            path = Path(dirpath) / name
            category = rel_dir.parts[0] if rel_dir.parts else ""
            problem = _check_inside(root, path)
            if not category and problem is None:
                problem = "not inside a category subfolder"
            items.append(SourceItem(id=rel, category=category, source_path=str(path), path=path, problem=problem))
    return SourceListing(items=items, ignored=ignored, description=f"folder {root}")


def _read_table(path: Path) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """Rows of a CSV or Parquet catalog as strings, its columns, and malformed CSV lines."""
    import pandas as pd

    malformed: list[str] = []
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        elif suffix in (".csv", ".tsv", ".txt"):

            def bad_line(fields: list[str]) -> None:
                malformed.append(",".join(fields)[:120])
                return None

            frame = pd.read_csv(
                path,
                sep="\t" if suffix == ".tsv" else ",",
                dtype=str,
                keep_default_na=False,
                on_bad_lines=bad_line,
                engine="python",
            )
        else:
            raise UserError(f"{path}: catalog must be .csv, .tsv or .parquet")
    except UserError:
        raise
    except Exception as err:
        raise UserError(f"{path}: cannot read catalog ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    frame = frame.astype(str).where(frame.notna(), "")
    return frame.to_dict(orient="records"), [str(c) for c in frame.columns], malformed


def from_catalog(cfg: DataConfig, catalog: Path) -> SourceListing:
    """Rows of a catalog table: an image column (a path or an id formatted by ``image_pattern``) and a category."""
    if not catalog.is_file():
        raise UserError(f"{catalog}: catalog file not found")
    root_arg = Path(cfg.image_root) if cfg.image_root else catalog.parent
    if not root_arg.is_dir():
        raise UserError(f"{root_arg}: image root is not a folder (set data.image_root or --image-root)")
    root = root_arg.resolve()
    rows, columns, malformed = _read_table(catalog)
    for col, option in ((cfg.image_column, "image_column"), (cfg.category_column, "category_column")):
        if col not in columns:
            raise UserError(
                f"{catalog}: no column {col!r} (columns: {', '.join(columns)}); "
                f"set data.{option} or --{option.replace('_', '-')}"
            )
    items: list[SourceItem] = []
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        value = row[cfg.image_column].strip()
        category = row[cfg.category_column].strip()
        item_id = value or f"row-{line}"
        rel = cfg.image_pattern.format(value)
        path = root / rel
        item = SourceItem(id=item_id, category=category, source_path=str(path), path=path)
        if not value:
            item.problem = f"row {line}: empty {cfg.image_column!r}"
        elif item_id in seen:
            item.problem = f"row {line}: {cfg.image_column!r} {value!r} repeats an earlier row"
            item.id = f"{item_id}#row-{line}"
        elif Path(rel).is_absolute() or not Path(os.path.normpath(root / rel)).is_relative_to(root):
            item.problem = f"row {line}: path {rel!r} points outside the catalog root {root}"
        elif not category:
            item.problem = f"row {line}: empty {cfg.category_column!r}"
        else:
            item.problem = _check_inside(root, path)
        seen.add(item_id)
        items.append(item)
    for i, text in enumerate(malformed):
        items.append(
            SourceItem(
                id=f"malformed-{i}",
                category="",
                source_path=str(catalog),
                problem=f"malformed CSV line (wrong number of fields): {text}",
            )
        )
    return SourceListing(items=items, ignored=[], description=f"catalog {catalog} (images under {root})")


def from_builtin(cfg: DataConfig) -> SourceListing:
    """The 70,000 Fashion-MNIST images, with their official split recorded."""
    from productgen.data import fashion_mnist

    ds = fashion_mnist.load(Path(cfg.input))
    items: list[SourceItem] = []
    for split, images, labels in (
        ("train", ds.train_images, ds.train_labels),
        ("test", ds.test_images, ds.test_labels),
    ):
        for i in range(len(images)):
            items.append(
                SourceItem(
                    id=f"{split}-{i:05d}",
                    category=fashion_mnist.CLASSES[int(labels[i])],
                    source_path=f"{cfg.input}/{fashion_mnist.FILES[split][0]}#{i}",
                    pixels=images[i],
                    official_split=split,
                )
            )
    return SourceListing(items=items, ignored=[], description=f"built-in Fashion-MNIST ({cfg.input})")


def list_source(cfg: DataConfig) -> SourceListing:
    """Dispatch on ``cfg.source`` and apply the known-category filter."""
    if cfg.source == "builtin":
        listing = from_builtin(cfg)
    elif cfg.source == "folder":
        listing = from_folder(Path(cfg.input))
    else:
        listing = from_catalog(cfg, Path(cfg.input))
    if cfg.categories is not None:
        known = set(cfg.categories)
        for item in listing.items:
            if item.problem is None and item.category not in known:
                item.problem = f"unknown category {item.category!r} (known: {', '.join(sorted(known))})"
    return listing
