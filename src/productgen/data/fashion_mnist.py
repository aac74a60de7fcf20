"""The built-in dataset: Fashion-MNIST (70,000 real product images, 10 categories, MIT licence).

Read straight from the IDX files that Debian's ``dataset-fashion-mnist`` package installs, so nothing needs
the network. Where the package is missing, torchvision's downloader is the fallback; where neither works, one
message says what to install.
"""

from __future__ import annotations

import gzip
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from productgen.common.errors import UserError

CLASSES: tuple[str, ...] = (
    "tshirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = (
    "install the Debian package (apt-get install dataset-fashion-mnist), or run "
    "'productgen data fetch --download' where the internet is reachable"
)


@dataclass(frozen=True)
class FashionMNIST:
    """Both official splits as uint8 arrays: images ``[N, 28, 28]``, labels ``[N]``."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into a uint8 array, checking its header against its size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"{path}: cannot read IDX file ({err}); {INSTALL_HINT}") from None
    if len(raw) < 8 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path}: not a uint8 IDX file; {INSTALL_HINT}")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise UserError(f"{path}: IDX header says {dims} but the file holds {len(raw) - offset} values")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(dims)


def locate(folder: Path | None) -> Path:
    """The folder holding the four IDX files: ``folder`` if it has them, else the Debian package's."""
    candidates = [p for p in (folder, DEBIAN_DIR) if p is not None]
    for cand in candidates:
        if all(_find(cand, stem) for pair in FILES.values() for stem in pair):
            return cand
    where = " or ".join(str(c) for c in candidates)
    raise UserError(f"Fashion-MNIST IDX files not found in {where}: {INSTALL_HINT}")


def load(folder: Path | None = None) -> FashionMNIST:
    """Load both official splits, validating shapes and labels."""
    root = locate(folder)
    arrays: dict[str, np.ndarray] = {}
    for split, (img_stem, lbl_stem) in FILES.items():
        images = read_idx(_find(root, img_stem))  # type: ignore[arg-type]
        labels = read_idx(_find(root, lbl_stem))  # type: ignore[arg-type]
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise UserError(f"{root}: {split} images {images.shape} and labels {labels.shape} do not match")
        if labels.max(initial=0) >= len(CLASSES):
            raise UserError(f"{root}: {split} labels go up to {labels.max()}, expected < {len(CLASSES)}")
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
    return FashionMNIST(**arrays)


def fetch(dest: Path, download: bool = False) -> Path:
    """Put the IDX files into ``dest`` (the DVC-tracked raw folder), byte for byte.

    Copies from the Debian package when present; with ``download`` falls back to torchvision's downloader.
    Never overwrites files that differ from the package's: the raw folder is the user's data.
    """
    dest.mkdir(parents=True, exist_ok=True)
    if all(_find(dest, stem) for pair in FILES.values() for stem in pair):
        return dest
    if all(_find(DEBIAN_DIR, stem) for pair in FILES.values() for stem in pair):
        for pair in FILES.values():
            for stem in pair:
                src = _find(DEBIAN_DIR, stem)
                assert src is not None
                target = dest / src.name
                if not target.exists():
                    tmp = target.with_name(target.name + ".tmp")
                    shutil.copyfile(src, tmp)
                    tmp.replace(target)
        return dest
    if not download:
        raise UserError(f"Fashion-MNIST is not installed: {INSTALL_HINT}")
    try:
        from torchvision.datasets import FashionMNIST as TVFashionMNIST

        tv = TVFashionMNIST(root=str(dest / "_torchvision"), train=True, download=True)
        TVFashionMNIST(root=str(dest / "_torchvision"), train=False, download=True)
    except Exception as err:  # network errors come in many types
        raise UserError(f"Fashion-MNIST download failed ({type(err).__name__}: {err}); {INSTALL_HINT}") from None
    raw = Path(tv.raw_folder)
    for pair in FILES.values():
        for stem in pair:
            src = _find(raw, stem)
            if src is None:
                raise UserError(f"torchvision download left no {stem} in {raw}; {INSTALL_HINT}")
            shutil.copyfile(src, dest / src.name)
    shutil.rmtree(dest / "_torchvision", ignore_errors=True)
    return dest
