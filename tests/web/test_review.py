"""The Models page's review of a challenger that waits for approval (issue 21, item 5), in a real browser: the
champion and the waiting challenger side by side (the same seeds per category from both generators, the same test
photos through both image models, the figures per category, the drift summary), Approve / Reject as CSRF-checked
POST forms for a signed-in user who may promote; anyone else gets 401/403 and nothing changes.

A store of its own (its champions and waiting versions must not move test_web.py's), the page as a real uvicorn
server on 127.0.0.1 in this process, real tiny models trained and registered, the approval asked through
:func:`productgen.registry.approval.request` (what the retrain flow runs with ``registry.approval: required``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.web.conftest import CONTENT_HASH, EVAL, EXTRA, PASSWORD, USER, Store, _train_and_register, using
from tests.web.inprocess import OTHER, OTHER_PASSWORD, serving

SHOTS = Path(__file__).resolve().parents[2] / "docs" / "images"
PER_CATEGORY = {"bags": 44.0, "shoes": 39.0, "shirts": 37.0}


def _scores(fid: float, shift: float) -> dict[str, Any]:
    return {**EVAL, "fid": fid, "per_category": {k: {"fid": v + shift} for k, v in PER_CATEGORY.items()}}


def _ask(task: str, version: str, uri: str) -> None:
    """Record the gate's verdict (both stored evaluations, the same set) and ask for approval, as the flow does."""
    from productgen.config import RegistryConfig
    from productgen.registry import approval, gate
    from productgen.registry import promotion as registry
    from productgen.web.champions import client

    c = client()
    name = registry.registered_name(task, None)
    champion = registry.alias_version(c, name, "champion")
    verdict = gate.decide(
        task,
        registry.stored_scored(c, name, version),
        registry.stored_scored(c, name, champion),
        RegistryConfig(),
        0.0,
    )
    registry.record_verdict(task, version, verdict)
    registry.tag_version(
        task,
        version,
        approval.DRIFT_TAG,
        json.dumps({"new_categories": [], "removed_categories": [], "duplicate_share": 0.01, "alerts": []}),
    )
    approval.request(task, version, 24.0)


@pytest.fixture(scope="module")
def review(params: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Store, dict[str, str]]]:
    """A gan champion (v1) with a better waiting challenger (v2), a restore champion (v1) with a waiting v2; the
    page serving them; alice and bob may sign in."""
    import torch

    from productgen.registry import promotion as registry
    from productgen.web.auth import add_user

    root = tmp_path_factory.mktemp("review")
    path = root / "params.yaml"
    path.write_text(params.read_text() + EXTRA)
    add_user(root / "users.txt", USER, PASSWORD)
    add_user(root / "users.txt", OTHER, OTHER_PASSWORD)
    store = Store(f"sqlite:///{root}/mlflow.db", root, path, root / "users.txt")
    old_users = os.environ.pop("PRODUCTGEN_WEB_USERS", None)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    versions: dict[str, str] = {}
    try:
        with using(store):
            _, gan_uri = _train_and_register(store, "gan", _scores(40.0, 0.0))
            versions["gan_uri"] = gan_uri
            versions["gan"] = registry.register_challenger("gan", gan_uri, _scores(30.0, -10.0), CONTENT_HASH, "test")
            _ask("gan", versions["gan"], gan_uri)
            _, restore_uri = _train_and_register(
                store, "restore", {"psnr": 30.0, "gain_db": 5.0, "view": "noise25", "images": 36}
            )
            versions["restore"] = registry.register_challenger(
                "restore", restore_uri, {**EVAL, "psnr": 31.0, "gain_db": 6.0, "view": "noise25"}, CONTENT_HASH, "test"
            )
            _ask("restore", versions["restore"], restore_uri)
        torch.set_num_threads(threads)
        with serving(path, root, store.uri, alias_check_seconds=0.5) as base:
            yield base, store, versions
    finally:
        torch.set_num_threads(threads)
        if old_users is not None:
            os.environ["PRODUCTGEN_WEB_USERS"] = old_users


@pytest.fixture
def browser_context_args() -> dict[str, Any]:
    """This module's pages are on its own server (absolute URLs): not test_web.py's ``base_url`` server."""
    return {}


def champion(store: Store, name: str) -> str | None:
    from productgen.registry import promotion as registry
    from productgen.web.champions import client

    with using(store):
        return registry.alias_version(client(), name, "champion")


def state(store: Store, name: str, version: str) -> str | None:
    from productgen.web.champions import client

    with using(store):
        return client().get_model_version(name, version).tags.get("approval.state")


def token(c: httpx.Client, url: str) -> str:
    text = c.get(url).text
    m = re.search(r'name="csrf_token" value="([^"]+)"', text)
    assert m, text[-1500:]
    return m.group(1)


def test_only_a_user_who_may_promote_answers(review: tuple[str, Store, dict[str, str]]) -> None:
    base, store, versions = review
    # A waiting version of its own: pytest may run this module's browser test first (it answers versions["gan"]).
    from productgen.registry import promotion as registry

    with using(store):
        before = champion(store, "productgen-gan")
        mine = registry.register_challenger("gan", versions["gan_uri"], _scores(30.0, -10.0), CONTENT_HASH, "test")
        _ask("gan", mine, versions["gan_uri"])
    form = {"task": "gan", "name": "productgen-gan", "version": mine}
    with httpx.Client(timeout=120) as c:
        r = c.post(base + "/models/approve", data={**form, "csrf_token": token(c, base + "/signin")})
        assert r.status_code == 401 and "Sign in to approve" in r.text
        r = c.post(base + "/models/approve", data=form)  # no CSRF token
        assert r.status_code == 403 and "CSRF" in r.text
        # bob signs in, then is taken off the users file: his session stays, his right to answer does not
        r = c.post(
            base + "/signin",
            data={"csrf_token": token(c, base + "/signin"), "username": OTHER, "password": OTHER_PASSWORD},
        )
        assert r.status_code == 303
        users = store.users.read_text().splitlines()
        store.users.write_text("\n".join(line for line in users if not line.startswith(OTHER + ":")) + "\n")
        page = c.get(base + "/models").text
        mine_part = page[page.find(f'id="review-productgen-gan-v{mine}"') :].split("</section>")[0]
        assert "may not approve or reject" in mine_part and 'class="approve"' not in page, mine_part[-1500:]
        for action in ("approve", "reject"):
            r = c.post(
                base + f"/models/{action}",
                data={**form, "reason": "looks wrong", "csrf_token": token(c, base + "/signin")},
            )
            assert r.status_code == 403 and f"{OTHER} may not {action}" in r.text, r.text[-800:]
        r = c.post(base + "/models/approve", data={**form, "version": "x1", "csrf_token": token(c, base + "/signin")})
        assert r.status_code in (400, 403)
    assert champion(store, "productgen-gan") == before
    assert state(store, "productgen-gan", mine) == "waiting"


def test_review_side_by_side_then_reject_and_approve_in_the_browser(
    page: Any, review: tuple[str, Store, dict[str, str]]
) -> None:
    base, store, versions = review
    gan, restore = versions["gan"], versions["restore"]
    page.goto(base + "/models")
    section = page.locator(f"#review-productgen-gan-v{gan}")
    text = section.inner_text()
    assert f"Waiting for approval: v{gan}" in text and "judged against champion v1" in text
    assert "Approve" not in text and "sign in" in text  # not signed in: no buttons
    compare = page.locator(f"#compare-productgen-gan-v{gan}")
    assert compare.locator("tbody tr").count() == 3  # one row per category
    assert compare.locator("img").count() == 6  # champion and challenger, the same seeds
    per_cat = page.locator(f"#per-category-productgen-gan-v{gan}").inner_text()
    for cat, fid in PER_CATEGORY.items():
        assert cat in per_cat and f"{fid:g}" in per_cat and f"{fid - 10:g}" in per_cat, per_cat
    assert "duplicate_share" in page.locator(f"#drift-productgen-gan-v{gan}").inner_text()
    photos = page.locator(f"#compare-productgen-restore-v{restore}")
    assert photos.locator("img").count() >= 6 and "noise25" in photos.inner_text()  # input, champion, challenger

    page.goto(base + "/signin")
    page.fill("#username", USER)
    page.fill("#password", PASSWORD)
    page.click("#go")
    page.wait_for_selector("#flash")
    if os.environ.get("PRODUCTGEN_WEB_SCREENSHOTS"):
        page.locator("#model-productgen-gan").screenshot(path=str(SHOTS / "web-review.png"))

    # reject the restorer's challenger with a reason: not promoted, the history says who and why
    box = page.locator(f"#review-productgen-restore-v{restore}")
    box.locator(".reject-form input[name=reason]").fill("blurs the zips")
    box.locator("button.reject").click()
    page.wait_for_selector("#flash")
    assert f"productgen-restore v{restore}: rejected by {USER} (blurs the zips)" in page.inner_text("#flash")
    assert champion(store, "productgen-restore") == "1"
    assert state(store, "productgen-restore", restore) == "rejected"
    assert page.locator(f"#review-productgen-restore-v{restore}").count() == 0

    # approve the GAN's challenger: promoted through the gate, the page serves it at once
    page.locator(f"#review-productgen-gan-v{gan} button.approve").click()
    page.wait_for_selector("#flash")
    flash = page.inner_text("#flash")
    assert f"productgen-gan v{gan}: approved by {USER}; promoted" in flash and f"champion is now v{gan}" in flash
    assert champion(store, "productgen-gan") == gan
    assert state(store, "productgen-gan", gan) == "approved"
    page.goto(base + "/generate")
    assert f"productgen-gan v{gan}" in page.inner_text("#model-label")
