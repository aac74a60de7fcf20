"""The one-line figure a shipped champion's card (and the README's quality table) shows, per kind of metrics."""

from __future__ import annotations

from pathlib import Path

from productgen.pipeline.champion import figure

ROOT = Path(__file__).resolve().parents[2]


def test_cyclegan_figure_shows_the_identity_baseline_and_kid_spread() -> None:
    m = {
        "fid": 50.04,
        "fid_identity": 127.01,
        "kid_mean": 0.0421,
        "kid_std": 0.0032,
        "kid_identity_mean": 0.1503,
        "kid_identity_std": 0.0051,
    }
    assert figure("cyclegan", m) == (
        "FID 50.0 (not translating: 127.0); KID x 1000 42.1 +- 3.2 (not translating: 150.3 +- 5.1)"
    )
    no_kid = {k: v for k, v in m.items() if not k.startswith("kid")}
    assert figure("cyclegan", no_kid) == "FID 50.0 (not translating: 127.0)"


def test_generator_and_pix2pix_figures_are_unchanged() -> None:
    assert figure("gan", {"fid": 60.781}) == "FID 60.78"
    assert figure("pix2pix", {"psnr": 18.024, "gain_db": 15.46, "fid": 100.81}) == "18.02 dB (+15.5 dB), FID 100.8"


def test_the_readme_quality_table_is_the_cards_table() -> None:
    """README.md and docs/quality.md show exactly what `productgen registry ship --table` prints from the cards
    in champions/: a figure changes in one place (the card), never by hand in two documents."""
    from productgen.registry import shipped

    folder = ROOT / shipped.FOLDER
    cards = {p.name: shipped.read_card(p) for p in sorted(folder.iterdir()) if (p / "config.json").is_file()}
    assert "cyclegan" in cards and "pix2pix" in cards
    table = shipped.table(cards)
    for doc in ("README.md", "docs/quality.md"):
        assert table in (ROOT / doc).read_text(encoding="utf-8"), f"{doc}: paste productgen registry ship --table"
