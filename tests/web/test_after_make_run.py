"""What ``make run`` leaves in the registry, served by ``productgen web``: every page (Generate, Enhance, Restyle,
Translate) shows a model, none says "no champion yet" (issue 20).

The store is prepared the way ``make run`` prepares ``./mlflow.db``, in a throw-away SQLite store of its own:

1. the ship step, unchanged: ``productgen registry ship`` (the very command of the Makefile's run target, the
   repository's params.yaml) over the repository's ``champions/``: every shipped model becomes its task's champion.
2. a model trained since takes a place: a 2-step GAN on the test catalog, trained with tracking, registered and
   promoted (by hand, ``force``: the flow's own gate against the shipped GAN is the retrain tests' subject, and a
   2-step GAN cannot beat it). Why not the flow itself: its quick profile is minutes of CPU for a model that only
   ever adds a Generate challenger.
3. the ship step again (the next ``make run``): it registers nothing and the trained GAN keeps its place.

Then ``productgen web`` with the repository's params.yaml on a free loopback port: each page's HTML names its
champions, and the Translate page in Debian's chromium runs the shipped pix2pix (sketch to product) and CycleGAN
(sneaker to ankle boot).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.conftest import encode, product_image
from tests.web.conftest import BIN, Store, _train_and_register, free_port, get, using

REPO = Path(__file__).resolve().parents[2]
CHAMPIONS = REPO / "champions"
PARAMS = REPO / "params.yaml"


@dataclass
class AfterRun:
    store: Store
    shipped: dict[str, dict[str, Any]]  # task -> card, every model in champions/
    flow_gan: str  # the version the flow's part promoted
    first: list[str]  # what `productgen registry ship` printed, once per make run
    second: list[str]


def _env(uri: str) -> dict[str, str]:
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "PRODUCTGEN_CHAMPIONS": str(CHAMPIONS),
        "OMP_NUM_THREADS": "1",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
    }
    env.pop("PRODUCTGEN_WEB_USERS", None)
    return env


def _ship(root: Path, uri: str) -> list[str]:
    """The Makefile's ship step: ``productgen registry ship`` with the repository's params.yaml."""
    p = subprocess.run(
        [str(BIN / "productgen"), "registry", "ship", "--params", str(PARAMS)],
        cwd=root,
        env=_env(uri),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Traceback" not in p.stderr, p.stderr
    return p.stdout.strip().splitlines()


def _versions(uri: str, model: str) -> list[str]:
    from mlflow import MlflowClient

    return sorted(str(v.version) for v in MlflowClient(uri).search_model_versions(f"name='{model}'"))


@pytest.fixture(scope="module")
def after_run(params: Path, tmp_path_factory: pytest.TempPathFactory) -> AfterRun:
    from mlflow import MlflowClient

    from productgen.registry import shipped
    from productgen.tasks import default

    with _champions_env():
        cards = shipped.cards()
    assert cards, f"nothing shipped in {CHAMPIONS}"
    root = tmp_path_factory.mktemp("after-make-run")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).search_experiments()  # the tables, once
    store = Store(uri, root, params, root / "users.txt")
    from productgen.web.auth import add_user

    add_user(store.users, "alice", "correct horse battery")
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    first = _ship(root, uri)
    try:
        with using(store):
            flow_gan, _ = _train_and_register(store, default().name, {"fid": 40.0}, force=True)
    finally:
        torch.set_num_threads(threads)
    return AfterRun(store, cards, flow_gan, first, _ship(root, uri))


@contextlib.contextmanager
def _champions_env() -> Iterator[None]:
    old = os.environ.get("PRODUCTGEN_CHAMPIONS")
    os.environ["PRODUCTGEN_CHAMPIONS"] = str(CHAMPIONS)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("PRODUCTGEN_CHAMPIONS", None)
        else:
            os.environ["PRODUCTGEN_CHAMPIONS"] = old


@pytest.fixture(scope="module")
def web(after_run: AfterRun) -> Iterator[str]:
    """``productgen web`` as a user starts it after ``make run`` (the repository's params.yaml), on loopback."""
    from productgen.registry.promotion import registered_name

    store = after_run.store
    port = free_port()
    log = open(store.root / "server.log", "wb")  # noqa: SIM115 (closed below)
    proc = subprocess.Popen(
        [str(BIN / "productgen"), "web", "--params", str(PARAMS), "--port", str(port)]
        + ["--users-file", str(store.users), "--log-level", "warning"],
        cwd=store.root,
        env=_env(store.uri),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    expected = {registered_name(t) for t in after_run.shipped}
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"productgen web exited {proc.returncode}:\n{(store.root / 'server.log').read_text()}"
                )
            with contextlib.suppress(OSError, ValueError):
                status, body = get(base + "/health", 2.0)
                if status == 200 and set(json.loads(body)["champions"]) >= expected:
                    break
            if time.monotonic() > deadline:
                raise AssertionError("productgen web did not list every shipped champion within 120 s")
            time.sleep(0.3)
        yield base
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        log.close()
        text = (store.root / "server.log").read_text(errors="replace")
        assert "Traceback" not in text, text[-4000:]


def _champion(uri: str, model: str) -> str | None:
    from mlflow import MlflowClient

    from productgen.registry.promotion import alias_version

    return alias_version(MlflowClient(uri), model, "champion")


def test_ship_makes_every_shipped_model_a_champion_once(after_run: AfterRun) -> None:
    from productgen.registry.promotion import registered_name
    from productgen.tasks import TASKS, default

    uri = after_run.store.uri
    print("\nship, first make run:\n" + "\n".join(after_run.first) + "\nship, second:\n" + "\n".join(after_run.second))
    assert len(after_run.first) == len(after_run.shipped), after_run.first  # one line per task
    assert len(after_run.second) == len(after_run.shipped), after_run.second
    flow_task = default().name
    for task, card in after_run.shipped.items():
        model = registered_name(task)
        line = next(x for x in after_run.first if x.startswith(f"{model} v"))
        again = next(x for x in after_run.second if x.startswith(f"{model} v"))
        version = re.match(rf"{re.escape(model)} v(\d+):", line).group(1)  # type: ignore[union-attr]
        assert card.get("figure", "?") in line
        assert f"{model} v{version}: champion (" in line, line
        if task == flow_task:  # the model trained since keeps its place when the next make run ships again
            assert _champion(uri, model) == after_run.flow_gan != version
        else:
            assert _champion(uri, model) == version
        assert f"already registered as version {version}" in again, again  # the second make run: nothing new
        newest = after_run.flow_gan if task == flow_task else version  # the second ship added no version
        assert _versions(uri, model)[-1] == newest
    pages = {spec.page for spec in TASKS.values() if spec.page}
    assert pages <= {TASKS[t].page for t in after_run.shipped}, "a page with no shipped champion"


def test_every_page_shows_a_model_after_make_run(after_run: AfterRun, web: str) -> None:
    from productgen.registry.promotion import registered_name
    from productgen.tasks import TASKS, on_page

    uri = after_run.store.uri
    for page in sorted({spec.page for spec in TASKS.values() if spec.page}):
        t0 = time.monotonic()
        status, body = get(f"{web}/{page}", timeout=180.0)  # the first request of a page loads its champions
        text = body.decode()
        assert status == 200, (page, status, text[:500])
        assert 'id="missing"' not in text and "champion in the registry yet" not in text, (page, text[:2000])
        labels = [
            f"{registered_name(spec.name)} v{_champion(uri, registered_name(spec.name))}"
            for spec in on_page(page)
            if spec.name in after_run.shipped
        ]
        assert labels and all(label in text for label in labels), (page, labels, text[:2000])
        print(f"/{page}: {', '.join(labels)} ({time.monotonic() - t0:.1f} s)")


def _screenshot_cyclegan(page: Any, model: str, task: str) -> None:
    """The README's screenshot: eight test photos of the shipped CycleGAN's first category, translated (needs the
    prepared built-in dataset, ``artifacts/prepared``, from ``dvc repro`` or ``make run``)."""
    from productgen.data.dataset import PreparedDataset

    domain = json.loads((CHAMPIONS / task / "config.json").read_text())["domains"]["a"]
    ds = PreparedDataset(REPO / "artifacts" / "prepared")
    images, labels = ds.tensors("test")
    photos = images[labels == ds.classes.index(domain)][:8]
    page.select_option("#model", model)
    page.set_input_files(
        "#photos",
        [
            {
                "name": f"{domain}-{i}.png",
                "mimeType": "image/png",
                "buffer": encode(Image.fromarray(x[0].numpy()), "PNG"),
            }
            for i, x in enumerate(photos)
        ],
    )
    page.click("#go")
    page.wait_for_selector("#result", timeout=120_000)
    page.screenshot(path=str(REPO / "docs" / "images" / "web-translate.png"), full_page=True)


def test_translate_page_in_a_browser_runs_every_shipped_translation_model(
    after_run: AfterRun, web: str, browser: Any
) -> None:
    """pix2pix draws a product from a sketch; CycleGAN turns a photo of its first category into its second."""
    from productgen.config import ViewsConfig
    from productgen.registry.promotion import registered_name
    from productgen.tasks import on_page
    from productgen.web.work import edges_of

    specs = [s for s in on_page("sketch") if s.name in after_run.shipped]
    assert {s.paired for s in specs} == {True, False}, "a sketch model and an unpaired translation model ship"
    photo = np.asarray(product_image(7, (28, 28)))
    inputs = {True: edges_of([photo], ViewsConfig().edge_threshold)[0], False: photo}
    page = browser.new_page()
    try:
        for spec in specs:
            model = registered_name(spec.name)
            page.goto(f"{web}/sketch")
            assert page.locator("#missing").count() == 0
            label = f"{model} v{_champion(after_run.store.uri, model)}"
            options = page.locator("#model option").all_inner_texts()
            assert any(o.startswith(label + " (") for o in options), (label, options)
            page.select_option("#model", model)
            image = encode(Image.fromarray(inputs[bool(spec.paired)]), "PNG")
            page.set_input_files("#photos", [{"name": "in.png", "mimeType": "image/png", "buffer": image}])
            page.click("#go")
            page.wait_for_selector("#result", timeout=120_000)
            assert page.locator("tr.pair").count() == 1
            assert model in page.inner_text("#result h2")
            if os.environ.get("PRODUCTGEN_WEB_SCREENSHOTS") and not spec.paired:
                _screenshot_cyclegan(page, model, spec.name)
    finally:
        page.close()
