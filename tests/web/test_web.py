"""The shop's web page in a real browser (Debian's chromium via pytest-playwright) against a real
``productgen web`` server and real registered champions: every page's happy path, bad uploads named on the
page while the server keeps serving, promote / rollback only for a signed-in user with the CSRF token, the
page following a champion that moves while it runs, 503 + Retry-After when busy, never a traceback."""

from __future__ import annotations

import html
import io
import json
import re
import threading
import zipfile
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, png_with_size, product_image
from tests.web.conftest import PASSWORD, USER, Store, get, using

pytestmark = pytest.mark.usefixtures("champions")
SHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
TAKE_SHOTS = bool(__import__("os").environ.get("PRODUCTGEN_WEB_SCREENSHOTS"))


def shot(page: Any, name: str) -> None:
    """README screenshots, when asked for (PRODUCTGEN_WEB_SCREENSHOTS=1): the pages exactly as the tests see them."""
    if TAKE_SHOTS:
        page.screenshot(path=str(SHOTS / f"web-{name}.png"), full_page=True)


def png(im: Image.Image) -> bytes:
    return encode(im, "PNG")


def files(*items: tuple[str, bytes]) -> list[dict[str, Any]]:
    return [{"name": n, "mimeType": "image/png", "buffer": b} for n, b in items]


def zip_names(data: bytes) -> list[str]:
    return sorted(zipfile.ZipFile(io.BytesIO(data)).namelist())


def download(page: Any, selector: str) -> bytes:
    with page.expect_download() as info:
        page.click(selector)
    return Path(info.value.path()).read_bytes()


def champion_version(store: Store, name: str) -> str | None:
    from productgen.registry import promotion as registry
    from productgen.web.champions import client

    with using(store):
        return registry.alias_version(client(), name, "champion")


def form_token(client: httpx.Client, base: str, path: str = "/generate") -> str:
    html = client.get(base + path).text
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, html[:500]
    return m.group(1)


def test_generate_page_grid_downloads_and_zip(page: Any, server: str) -> None:
    page.goto("/generate")
    assert "productgen-gan v1" in page.inner_text("#model-label")
    assert page.eval_on_selector_all("#category option", "els => els.map(e => e.textContent)") == [
        "bags",
        "shirts",
        "shoes",
    ]
    page.select_option("#category", "shoes")
    page.fill("#count", "6")
    page.fill("#seed", "3")
    page.click("#go")
    page.wait_for_selector("#grid")
    assert page.locator("#grid img").count() == 6
    shot(page, "generate")
    one = download(page, "#grid a >> nth=0")
    assert Image.open(io.BytesIO(one)).size == (28, 28)
    names = zip_names(download(page, "#zip"))
    assert names == [f"shoes/shoes-seed3-{i:02d}.png" for i in range(6)]
    # same model, category, count and seed: the same bytes
    page.click("#go")
    page.wait_for_selector("#grid")
    assert download(page, "#grid a >> nth=0") == one


def test_enhance_page_before_after_and_zip_with_original_names(page: Any, server: str, tmp_path: Path) -> None:
    page.goto("/enhance")
    assert "Denoise: productgen-restore v1 (noise25)" in page.inner_text("#task")
    folder = tmp_path / "shoot"
    (folder / "sub").mkdir(parents=True)
    (folder / "front.jpg").write_bytes(encode(product_image(1, (40, 30)), "JPEG", quality=90))
    (folder / "sub" / "side.png").write_bytes(png(product_image(2, (28, 28), "RGBA")))
    page.set_input_files("#folder", str(folder))  # a folder's worth, relative paths kept
    page.click("#go")
    page.wait_for_selector("#result")
    assert page.locator("tr.pair").count() == 2
    assert page.locator("img.before").count() == 2 and page.locator("img.after").count() == 2
    shot(page, "enhance")
    assert zip_names(download(page, "#zip")) == ["shoot/front.png", "shoot/sub/side.png"]
    page.set_input_files(
        "#photos", files(("a.webp", encode(product_image(3), "WEBP")), ("b.png", png(product_image(4))))
    )
    page.click("#go")
    page.wait_for_selector("#result")
    out = zipfile.ZipFile(io.BytesIO(download(page, "#zip")))
    assert sorted(out.namelist()) == ["a.png", "b.png"]
    assert Image.open(io.BytesIO(out.read("a.png"))).size == (40, 30)


def test_bad_uploads_are_named_on_the_page_and_the_server_keeps_serving(page: Any, server: str) -> None:
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8))
    big = png(noise)
    assert len(big) > 262144  # over the tests' web.max_file_bytes
    page.goto("/enhance")
    page.set_input_files(
        "#photos",
        files(
            ("notes.png", b"this is not an image\n"),
            ("bomb.png", png_with_size(20000, 20000)),
            ("huge.png", big),
            ("good.png", png(product_image(5))),
        ),
    )
    page.click("#go")
    page.wait_for_selector("#errors")
    errors = page.inner_text("#errors")
    assert "3 files could not be used" in errors
    assert re.search(r"notes\.png: not a JPEG, PNG or WebP image", errors), errors
    assert re.search(r"bomb\.png: .*decompression bomb", errors), errors  # the guard of productgen data
    assert re.search(r"huge\.png: [\d.]+ KiB is over the 256 KiB limit per file", errors), errors
    assert page.locator("tr.pair").count() == 1  # the good file is still enhanced
    shot(page, "bad-uploads")
    # only bad files: a 400 page with the reasons, no traceback
    page.set_input_files("#photos", files(("empty.png", b"")))
    with page.expect_navigation() as nav:
        page.click("#go")
    assert nav.value.status == 400
    assert "empty.png: empty file" in page.inner_text("#errors")
    assert "Traceback" not in page.content()
    # a request over web.max_request_bytes: 413 with a message, and the server answers the next request
    with httpx.Client() as c:
        token = form_token(c, server, "/enhance")
        r = c.post(
            server + "/enhance",
            data={"csrf_token": token, "model": "denoise|productgen-restore"},
            files=[("photos", (f"p{i}.png", big, "image/png")) for i in range(20)],
        )
        assert r.status_code == 413 and "limit per request" in r.text and "Traceback" not in r.text
        assert c.get(server + "/generate").status_code == 200


def test_restyle_page_bundled_and_uploaded_style(page: Any, server: str) -> None:
    page.goto("/restyle")
    assert page.locator("label.style img").count() == 10  # the bundled styles, with thumbnails
    page.set_input_files("#photos", files(("bag.png", png(product_image(6, (48, 48))))))
    page.check("input[name=style][value=coffee]")
    assert page.is_checked("#preserve")
    page.click("#go")
    page.wait_for_selector("#result")
    assert "style coffee" in page.inner_text("#result h2") and "product preserved" in page.inner_text("#result h2")
    shot(page, "restyle")
    assert zip_names(download(page, "#zip")) == ["bag.png"]
    page.set_input_files("#photos", files(("bag.png", png(product_image(6, (48, 48))))))
    page.set_input_files("#style-file", files(("fabric.png", png(product_image(9, (64, 64))))))
    page.uncheck("#preserve")
    page.click("#go")
    page.wait_for_selector("#result")
    title = page.inner_text("#result h2")
    assert "style fabric.png" in title and "preserved" not in title


def test_sketch_to_product(page: Any, server: str) -> None:
    from productgen.config import ViewsConfig
    from productgen.web.work import edges_of

    photo = np.asarray(product_image(7, (28, 28)))
    sketch = edges_of([photo], ViewsConfig().edge_threshold)[0]
    page.goto("/sketch")
    page.select_option("#model", "productgen-pix2pix")  # the page also offers the CycleGAN champion
    page.set_input_files("#photos", files(("sketch.png", png(Image.fromarray(sketch)))))
    page.click("#go")
    page.wait_for_selector("#result")
    assert page.locator("tr.pair").count() == 1
    shot(page, "sketch")
    page.set_input_files("#photos", files(("catalog.png", png(Image.fromarray(photo)))))
    page.check("#edges")
    page.click("#go")
    page.wait_for_selector("#result")
    assert "edges drawn from the photo" in page.inner_text("#result h2")


def test_translate_page_offers_cyclegan_both_ways(page: Any, server: str) -> None:
    """The pix2pix and CycleGAN champions share the Translate page: the CycleGAN one goes either way between its
    two categories; a way a model cannot go, or edges for a model that takes photos, is a 400 with the reason."""
    page.goto("/sketch")
    options = page.locator("#model option").all_inner_texts()
    assert any(o.startswith("productgen-pix2pix v") and "(edges -> product)" in o for o in options), options
    assert any(o.startswith("productgen-cyclegan v") and "(bags -> shoes, and back)" in o for o in options), options
    page.select_option("#model", "productgen-cyclegan")
    page.select_option("#direction", "ba")
    page.set_input_files("#photos", files(("shoe.png", png(product_image(4, (28, 28))))))
    page.click("#go")
    page.wait_for_selector("#result")
    assert "shoes -> bags" in page.inner_text("#result h2") and page.locator("tr.pair").count() == 1
    assert page.locator("#direction").input_value() == "ba" and page.locator("#model").input_value() == (
        "productgen-cyclegan"
    )
    photo = ("photos", ("bag.png", png(product_image(5, (28, 28))), "image/png"))
    with httpx.Client() as c:
        token = form_token(c, server, "/sketch")
        cases = {
            ("productgen-pix2pix", "ba", False): "translates one way only (edges -> product); choose forward",
            ("productgen-cyclegan", "zz", False): "direction: 'zz' is not a direction",
            ("productgen-cyclegan", "ab", True): "takes photos as they are (bags -> shoes)",
        }
        for (model, direction, edges), message in cases.items():
            data = {"csrf_token": token, "model": model, "direction": direction} | ({"edges": "on"} if edges else {})
            r = c.post(server + "/sketch", data=data, files=[photo])
            text = html.unescape(r.text)
            assert r.status_code == 400 and message in text and "Traceback" not in text, (model, text[-800:])
        r = c.post(server + "/sketch", data={"csrf_token": token, "model": "productgen-cyclegan"}, files=[photo])
        assert r.status_code == 200 and "bags -> shoes" in html.unescape(r.text)


def test_promote_and_rollback_need_sign_in_and_csrf_and_the_page_follows(page: Any, server: str, store: Store) -> None:
    assert champion_version(store, "productgen-gan") == "1"
    page.goto("/models")
    gan = page.locator("#model-productgen-gan")
    text = gan.inner_text()
    assert "Champion: v1" in text and "Challenger: v2" in text
    for fragment in ("fid", "40", "set", CONTENT_HASH_PREFIX, "decision", "promoted", "no champion yet"):
        assert fragment in text, fragment
    assert "git.commit" in text or "lineage" in text  # the lineage of the training run
    assert page.locator("#task-style .missing").inner_text().startswith("No style champion")
    assert page.locator("button.promote").count() == 0  # not signed in: no buttons
    with httpx.Client() as c:  # a request without sign-in, with a valid CSRF token: refused
        token = form_token(c, server, "/generate")
        r = c.post(server + "/models/promote", data={"csrf_token": token, "task": "gan", "name": "productgen-gan"})
        assert r.status_code == 401 and "Sign in" in r.text
        # signed in, but the POST lacks the token (another site's form): refused
        token = form_token(c, server, "/signin")
        r = c.post(server + "/signin", data={"csrf_token": token, "username": USER, "password": PASSWORD})
        assert r.status_code == 303
        r = c.post(server + "/models/promote", data={"task": "gan", "name": "productgen-gan"})
        assert r.status_code == 403 and "CSRF" in r.text
        r = c.post(server + "/models/promote", data={"csrf_token": "forged", "task": "gan", "name": "productgen-gan"})
        assert r.status_code == 403
        bad = c.post(server + "/signin", data={"csrf_token": token, "username": USER, "password": "wrong"})
        assert bad.status_code in (401, 403)
    assert champion_version(store, "productgen-gan") == "1"

    page.goto("/signin")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#go")
    page.wait_for_selector("#flash")
    assert f"Signed in as {USER}" in page.inner_text("#flash")
    shot(page, "models")
    page.click("#model-productgen-gan button.promote")
    page.wait_for_selector("#flash")
    assert "productgen-gan v2: promoted (fid 30 vs champion 40" in page.inner_text("#flash")
    assert champion_version(store, "productgen-gan") == "2"
    page.goto("/generate")
    assert "productgen-gan v2" in page.inner_text("#model-label")  # the page serves the new champion at once
    page.goto("/models")
    page.click("#model-productgen-gan button.rollback")
    page.wait_for_selector("#flash")
    assert "champion v2 -> v1 (rollback)" in page.inner_text("#flash")
    assert champion_version(store, "productgen-gan") == "1"
    history = page.inner_text("#model-productgen-gan details.history")
    assert "rollback" in history and "promote" in history


def test_page_follows_a_champion_moved_elsewhere(page: Any, server: str, store: Store) -> None:
    """Someone promotes from the CLI or the retrain flow while the page runs: it serves the new one, no restart."""
    from productgen.registry import promotion as registry

    page.goto("/generate")
    before = page.inner_text("#model-label")
    with using(store):
        current = champion_version(store, "productgen-gan")
        target = "2" if current == "1" else "1"
        registry.promote("gan", target, 0.0, force=True)
    try:
        for _ in range(40):
            page.goto("/generate")
            if f"v{target}" in page.inner_text("#model-label"):
                break
            page.wait_for_timeout(250)
        assert f"productgen-gan v{target}" in page.inner_text("#model-label"), before
        page.fill("#count", "2")
        page.click("#go")
        page.wait_for_selector("#grid")
        assert f"from productgen-gan v{target}" in page.inner_text("#result h2")
    finally:
        with using(store):
            registry.promote("gan", current, 0.0, force=True)


def test_busy_server_answers_503_with_retry_after(server: str) -> None:
    """web.max_pending is 2 here: of 8 simultaneous uploads some must be turned away at once, none queued forever."""
    photo = png(Image.fromarray(np.random.default_rng(1).integers(0, 256, (200, 200), dtype=np.uint8)))
    statuses: list[tuple[int, str | None]] = []
    with httpx.Client() as c:
        token = form_token(c, server, "/enhance")
        cookies = dict(c.cookies)

    def one() -> None:
        with httpx.Client(cookies=cookies, timeout=60) as c:
            r = c.post(
                server + "/enhance",
                data={"csrf_token": token, "model": "denoise|productgen-restore"},
                files=[("photos", (f"p{i}.png", photo, "image/png")) for i in range(12)],
            )
            statuses.append((r.status_code, r.headers.get("retry-after")))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(s for s, _ in statuses)
    assert set(codes) <= {200, 503} and 200 in codes and 503 in codes, codes
    assert all(ra == "2" for s, ra in statuses if s == 503)
    assert get(server + "/health")[0] == 200


def test_bad_form_values_get_messages_never_tracebacks(server: str) -> None:
    with httpx.Client() as c:
        token = form_token(c, server)
        cases = {
            (("count", "abc"),): "count: 'abc' is not a whole number",
            (("count", "65"),): "count: 65 is outside 1..64",
            (("category", "hats"),): "unknown category 'hats'",
            (("seed", "-1"),): "seed: -1 is outside",
        }
        for fields, message in cases.items():
            data = {"csrf_token": token, "category": "bags", "count": "2", "seed": "0", **dict(fields)}
            r = c.post(server + "/generate", data=data)
            text = html.unescape(r.text)
            assert r.status_code == 400 and message in text and "Traceback" not in text, (fields, text[-800:])
        r = c.post(server + "/enhance", data={"csrf_token": token}, files=[("other", ("x.txt", b"x", "text/plain"))])
        assert r.status_code == 400 and "choose at least one image" in r.text
        r = c.post(
            server + "/enhance", content=b"--x\r\ngarbage", headers={"content-type": "multipart/form-data; boundary=x"}
        )
        assert r.status_code in (400, 403) and "Traceback" not in r.text
        assert c.get(server + "/nowhere").status_code == 404
        assert c.get(server + "/results/nope.zip").status_code == 404
        health = json.loads(c.get(server + "/health").text)
        assert health["status"] == "ok" and health["champions"]["productgen-gan"] in ("1", "2")


CONTENT_HASH_PREFIX = "cccccccccccccccc:test"
