"""The human-readable validation report: Markdown for terminals and pull requests, HTML for a browser.

Both are written next to ``summary.json`` and show the verdict first, then each check with its threshold and
what was observed, the images per split and category, the preview grid, and the quarantined files.
"""

from __future__ import annotations

import html
import shutil
from typing import TYPE_CHECKING, Any

from productgen.common import atomic

if TYPE_CHECKING:
    from productgen.data.dataset import PreparedDataset
    from productgen.data.validate import ValidationResult

MAX_LISTED = 500


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(result: ValidationResult, ds: PreparedDataset, summary: dict[str, Any]) -> None:
    out = result.out
    has_preview = (ds.root / "preview.png").is_file()
    if has_preview:
        shutil.copyfile(ds.root / "preview.png", out / "preview.png")
    verdict = "PASSED" if result.success else "FAILED"
    counts = result.counts
    quarantine = result.quarantine

    md = [
        f"# Dataset validation: {verdict}",
        "",
        f"- Dataset: `{ds.root}` ({ds.meta['source']['description']})",
        f"- Content hash: `{ds.content_hash}`",
        f"- {counts['files']:,} source files, {counts['images']:,} prepared images at {ds.resolution} px "
        f"{ds.meta['mode']}, {counts['rejected']:,} rejected at decoding, "
        f"{len({q['source_path'] for q in quarantine}):,} files quarantined",
        "- Splits: " + ", ".join(f"{k} {v:,}" for k, v in counts["splits"].items()),
        "",
        "## Checks",
        "",
        "| result | table | check | column | threshold | observed |",
        "|---|---|---|---|---|---|",
    ]
    for c in sorted(result.checks, key=lambda c: c.success):
        md.append(
            f"| {'pass' if c.success else '**FAIL**'} | {c.table} | {_md_escape(c.check)} | {c.column or ''} | "
            f"{_md_escape(c.threshold)} | {_md_escape(c.observed)} |"
        )
    fractions = ds.meta.get("split_fractions", {})
    targets = ds.meta.get("split_targets", {})
    target_text = ", ".join(f"{s} {t:.0%}" for s, t in targets.items()) or "-"
    md += [
        "",
        "## Images per category",
        "",
        f"Achieved split shares (content-hash split, target {target_text}"
        + (", official test images not drawn" if targets.get("test") == 0 and counts["splits"].get("test") else "")
        + "):",
        "",
        "| category | images | train | val | test |",
        "|---|---|---|---|---|",
    ]
    for k, v in counts["categories"].items():
        f = fractions.get(k, {})
        shares = " | ".join(f"{f[s]:.1%}" if s in f else "-" for s in ("train", "val", "test"))
        md.append(f"| {_md_escape(k)} | {v:,} | {shares} |")
    if has_preview:
        md += ["", "## Preview (training split)", "", "![preview](preview.png)"]
    md += ["", f"## Quarantined files ({len(quarantine):,} entries, also in `quarantine.csv`)", ""]
    if quarantine:
        md += ["| file | category | reason |", "|---|---|---|"]
        md += [
            f"| `{_md_escape(q['source_path'])}` | {_md_escape(q['category'])} | {_md_escape(q['reason'])} |"
            for q in quarantine[:MAX_LISTED]
        ]
        if len(quarantine) > MAX_LISTED:
            md.append(f"\n... {len(quarantine) - MAX_LISTED:,} more in quarantine.csv")
    else:
        md.append("None.")
    atomic.write_text(out / "report.md", "\n".join(md) + "\n")

    e = html.escape
    rows = "".join(
        f"<tr class='{'ok' if c.success else 'bad'}'><td>{'pass' if c.success else 'FAIL'}</td><td>{e(c.table)}</td>"
        f"<td>{e(c.check)}</td><td>{e(c.column or '')}</td><td>{e(c.threshold)}</td><td>{e(c.observed)}</td></tr>"
        for c in sorted(result.checks, key=lambda c: c.success)
    )
    qrows = "".join(
        f"<tr><td><code>{e(q['source_path'])}</code></td><td>{e(q['category'])}</td><td>{e(q['reason'])}</td></tr>"
        for q in quarantine[:MAX_LISTED]
    )
    cats = "".join(f"<tr><td>{e(k)}</td><td>{v:,}</td></tr>" for k, v in counts["categories"].items())
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>Dataset validation: {verdict}</title>
<style>body{{font-family:sans-serif;margin:2em}} table{{border-collapse:collapse}} td,th{{border:1px solid #ccc;
padding:3px 8px}} .bad td{{background:#fdd}} h1 .v{{color:{"#080" if result.success else "#c00"}}}</style></head>
<body><h1>Dataset validation: <span class="v">{verdict}</span></h1>
<p>{e(str(ds.root))} &middot; {e(ds.meta["source"]["description"])}<br>content hash <code>{e(ds.content_hash)}</code><br>
{counts["files"]:,} source files, {counts["images"]:,} prepared images, {counts["rejected"]:,} rejected at decoding</p>
<h2>Checks</h2><table><tr><th>result</th><th>table</th><th>check</th><th>column</th><th>threshold</th>
<th>observed</th></tr>{rows}</table>
<h2>Images per category</h2><table><tr><th>category</th><th>images</th></tr>{cats}</table>
{'<h2>Preview</h2><img src="preview.png">' if has_preview else ""}
<h2>Quarantined files ({len(quarantine):,})</h2><table><tr><th>file</th><th>category</th><th>reason</th></tr>{qrows}
</table></body></html>
"""
    atomic.write_text(out / "report.html", page)
