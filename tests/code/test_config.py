from pathlib import Path

import pytest

from productgen.common.errors import UserError
from productgen.config import Params, load_params

ROOT = Path(__file__).resolve().parents[2]


def test_project_params_load_and_match_defaults_types() -> None:
    p = load_params(ROOT / "params.yaml")
    assert isinstance(p, Params)
    assert p.data.source == "builtin" and p.data.resolution == 28
    assert p.data.split.train + p.data.split.val + p.data.split.test == pytest.approx(1.0)


def test_overrides_win_over_file(tmp_path: Path) -> None:
    f = tmp_path / "params.yaml"
    f.write_text("data:\n  resolution: 64\n")
    p = load_params(f, {"data.mode": "RGB", "data.resolution": None})
    assert (p.data.resolution, p.data.mode) == (64, "RGB")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("data:\n  resolutoin: 64\n", "unknown key 'resolutoin'"),
        ("data:\n  resolution: big\n", "data.resolution: expected an integer"),
        ("data:\n  resolution: 512\n", "outside 28..256"),
        ("data:\n  mode: CMYK\n", "data.mode: 'CMYK' is not one of"),
        ("data:\n  split: {train: 0.9, val: 0.2, test: 0.1}\n", "sum to 1"),
        ("validation:\n  max_rejected_fraction: 2\n", "between 0 and 1"),
        ("data: [1, 2\n", "not valid YAML"),
    ],
)
def test_bad_params_name_the_file_and_field(tmp_path: Path, text: str, fragment: str) -> None:
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(UserError) as err:
        load_params(f)
    assert fragment in str(err.value)
    assert str(f) in str(err.value)


def test_missing_params_file_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
