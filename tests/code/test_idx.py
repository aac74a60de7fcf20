import gzip
from pathlib import Path

import numpy as np
import pytest

from productgen.common.errors import UserError
from productgen.data import fashion_mnist


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a").write_bytes(_idx(arr))
    (tmp_path / "a.gz").write_bytes(gzip.compress(_idx(arr)))
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "a"), arr)
    assert np.array_equal(fashion_mnist.read_idx(tmp_path / "a.gz"), arr)


def test_read_idx_rejects_bad_files(tmp_path: Path) -> None:
    arr = np.zeros((2, 3), np.uint8)
    (tmp_path / "short").write_bytes(_idx(arr)[:-1])
    (tmp_path / "text").write_text("hello world, not idx")
    (tmp_path / "badgz.gz").write_bytes(b"not gzip")
    for name, msg in (("short", "IDX header says"), ("text", "not a uint8 IDX"), ("badgz.gz", "cannot read")):
        with pytest.raises(UserError, match=msg):
            fashion_mnist.read_idx(tmp_path / name)


def test_load_from_a_folder_of_idx_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, n in (("train", 20), ("test", 10)):
        img, lbl = fashion_mnist.FILES[split]
        (tmp_path / (img + ".gz")).write_bytes(gzip.compress(_idx(rng.integers(0, 256, (n, 28, 28)))))
        (tmp_path / lbl).write_bytes(_idx(rng.integers(0, 10, n)))
    ds = fashion_mnist.load(tmp_path)
    assert ds.train_images.shape == (20, 28, 28) and ds.test_labels.shape == (10,)


def test_missing_dataset_message_says_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fashion_mnist, "DEBIAN_DIR", tmp_path / "no-package")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.load(tmp_path / "empty")
    with pytest.raises(UserError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist.fetch(tmp_path / "dest", download=False)
