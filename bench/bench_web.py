"""Latency of the web page against plain ``mlflow models serve`` for the same work, measured in one run.

    .venv/bin/python bench/bench_web.py                       # tiny champions at the built-in resolution
    .venv/bin/python bench/bench_web.py --store sqlite:///mlflow.db   # a store with both champions (below)

Both servers serve the same registered champions (``models:/productgen-gan@champion``,
``models:/productgen-restore@champion``) from the same store, each as one process on this machine:

- Generate: 64 new images of one category. Web: ``POST /generate`` (computes and PNG-encodes the 64 images,
  renders the page) and, as the browser then does, the 64 images (here: their zip, the same bytes in one GET).
  MLflow: ``POST /invocations`` with ``{"category", "count": 64, "seed"}`` (64 base64 PNGs back).
- Enhance: 16 photos at the built-in resolution (28 px) through the denoiser. Web: the multipart upload of
  ``POST /enhance`` plus the zip of results; MLflow: 16 base64 rows in one JSON request.
- Page: ``GET /generate`` (the page itself); MLflow has no page, its ``GET /ping`` is shown as the floor.

Each case runs under 1 user (sequential requests) and 8 concurrent users (each a thread with its own
connection); p50 / p95 are over every request of the case, after warm-up requests. The champions are the
quick-CPU profile architectures (``flows/profiles/quick-cpu.yaml``'s GAN, the default U-Net restorer) trained
for a few steps on a synthetic 28 px catalog unless ``--store`` names a store that has them (``make run`` registers
the GAN; ``python flows/retrain.py --task restore --profile quick-cpu-restore`` the restorer): latency does not
depend on how well they are trained. Targets (issue 12): Generate 64 p50 < 1 s, Enhance 16 p50 < 2 s, page
< 100 ms.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def process(cmd: list[str], ready_url: str, env: dict[str, str], log: Path, timeout: float = 180) -> Iterator[None]:
    import httpx

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=log.parent,
        )
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"{cmd[0]} exited {proc.returncode}:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(ready_url, timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise SystemExit(f"{' '.join(cmd[:3])} not ready after {timeout:.0f} s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def make_champions(root: Path, uri: str) -> None:
    """Quick-profile GAN and U-Net restorer on a synthetic 28 px grayscale catalog, registered as champions."""
    from tests.conftest import TINY, write_good_folder

    from productgen.config import DataConfig, load_params
    from productgen.data.prepare import prepare
    from productgen.pipeline.train import train
    from productgen.registry import promotion as registry

    write_good_folder(root / "shop", {"bags": 24, "shoes": 24, "shirts": 24}, size=(28, 28))
    prepare(
        DataConfig(source="folder", input=str(root / "shop"), out=str(root / "prepared"), mode="L", resolution=28),
        show_progress=False,
    )
    params = root / "params.yaml"
    params.write_text(TINY.format(prepared=root / "prepared").split("gan:")[0])
    os.environ["MLFLOW_TRACKING_URI"] = uri
    for task, profile, metrics in (
        ("gan", "quick-cpu", {"fid": 100.0, "n_real": 72, "n_fake": 72}),
        ("restore", "quick-cpu-restore", {"psnr": 25.0, "gain_db": 3.0, "images": 72}),
    ):
        p = load_params(
            params,
            {
                "train.out": str(root / task),
                "train.max_steps": 2,
                "train.batch_size": 8,
                "train.checkpoint_every": 1000,
                "train.sample_every": 1000,
            },
            profile=profile,
        )
        result = train(p, task, show_progress=False, track=True)
        version = registry.register_challenger(task, result.model_uri, metrics, "b" * 64, "test")
        registry.promote(task, version, 0.0, force=True)


def png_b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def measure(label: str, fn: Callable[[Any], Any], users: int, per_user: int, warmup: int = 2) -> dict[str, Any]:
    import httpx

    times: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()

    def user() -> None:
        with httpx.Client(timeout=120) as c:
            for _ in range(warmup if users == 1 else 1):
                fn(c)
            barrier.wait()
            for _ in range(per_user):
                t0 = time.perf_counter()
                try:
                    fn(c)
                except Exception as err:  # noqa: BLE001 (reported, not hidden)
                    with lock:
                        errors.append(str(err)[:200])
                    continue
                with lock:
                    times.append(time.perf_counter() - t0)

    barrier = threading.Barrier(users)
    threads = [threading.Thread(target=user) for _ in range(users)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    times.sort()
    p50 = statistics.median(times) if times else float("nan")
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))] if times else float("nan")
    return {
        "case": label,
        "users": users,
        "n": len(times),
        "p50_ms": p50 * 1000,
        "p95_ms": p95 * 1000,
        "errors": errors[:3],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--store",
        help="MLflow store with productgen-gan / productgen-restore champions "
        "(default: train tiny ones into a temporary store)",
    )
    ap.add_argument("--requests", type=int, default=20, help="timed requests per case under 1 user")
    ap.add_argument("--per-user", type=int, default=5, help="timed requests per user under 8 users")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args()

    import httpx
    from tests.conftest import encode, product_image

    work = Path(tempfile.mkdtemp(prefix="productgen-bench-web-"))
    uri = args.store or f"sqlite:///{work}/mlflow.db"
    if args.store is None:
        t0 = time.perf_counter()
        make_champions(work, uri)
        print(f"champions trained and registered in {time.perf_counter() - t0:.0f} s ({uri})", flush=True)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    web_port, gan_port, restore_port = free_port(), free_port(), free_port()
    web, gan, rest = (f"http://127.0.0.1:{p}" for p in (web_port, gan_port, restore_port))

    photos = [encode(product_image(i, (28, 28)), "PNG") for i in range(16)]
    enh_body = {"dataframe_records": [{"image": png_b64(p)} for p in photos]}

    with contextlib.ExitStack() as stack:
        stack.enter_context(
            process(
                [str(BIN / "productgen"), "web", "--port", str(web_port), "--log-level", "warning"],
                web + "/health",
                env,
                work / "web.log",
            )
        )
        for model, port, url in (("productgen-gan", gan_port, gan), ("productgen-restore", restore_port, rest)):
            stack.enter_context(
                process(
                    [
                        str(BIN / "mlflow"),
                        "models",
                        "serve",
                        "-m",
                        f"models:/{model}@champion",
                        "--env-manager",
                        "local",
                        "--host",
                        "127.0.0.1",
                        "--port",
                        str(port),
                    ],
                    url + "/ping",
                    env,
                    work / f"serve-{port}.log",
                )
            )
        # wait until the page has its champions loaded
        deadline = time.monotonic() + 120
        while len(httpx.get(web + "/health").json()["champions"]) < 2:
            if time.monotonic() > deadline:
                raise SystemExit("the web page did not find both champions")
            time.sleep(0.5)
        with httpx.Client() as c:
            html = c.get(web + "/enhance").text
            token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)  # type: ignore[union-attr]
            option = re.search(r'<option value="(denoise\|[^"]+)"', html).group(1)  # type: ignore[union-attr]
            cookies = dict(c.cookies)
            page = c.get(web + "/generate").text
            category = re.search(r'<select name="category" id="category">\s*<option[^>]*>([^<]+)<', page).group(1)  # type: ignore[union-attr]
        gen_body = {"dataframe_records": [{"category": category, "count": 64, "seed": 0}]}

        def web_generate(c: Any) -> None:
            c.cookies.update(cookies)
            r = c.post(
                web + "/generate",
                data={"csrf_token": token, "model": "productgen-gan", "category": category, "count": "64", "seed": "0"},
            )
            r.raise_for_status()
            rid = re.search(r'/results/([^/"]+)\.zip', r.text).group(1)  # type: ignore[union-attr]
            c.get(f"{web}/results/{rid}.zip").raise_for_status()

        def web_enhance(c: Any) -> None:
            c.cookies.update(cookies)
            r = c.post(
                web + "/enhance",
                data={"csrf_token": token, "model": option},
                files=[("photos", (f"p{i:02d}.png", p, "image/png")) for i, p in enumerate(photos)],
            )
            r.raise_for_status()
            rid = re.search(r'/results/([^/"]+)\.zip', r.text).group(1)  # type: ignore[union-attr]
            c.get(f"{web}/results/{rid}.zip").raise_for_status()

        def mlflow_generate(c: Any) -> None:
            r = c.post(gan + "/invocations", json=gen_body)
            r.raise_for_status()
            assert len(r.json()["predictions"]) == 64

        def mlflow_enhance(c: Any) -> None:
            r = c.post(rest + "/invocations", json=enh_body)
            r.raise_for_status()
            assert len(r.json()["predictions"]) == 16

        def web_page(c: Any) -> None:
            c.get(web + "/generate").raise_for_status()

        def mlflow_ping(c: Any) -> None:
            c.get(gan + "/ping").raise_for_status()

        rows = []
        for users, n in ((1, args.requests), (8, args.per_user)):
            for case, ours, theirs in (
                ("generate 64", web_generate, mlflow_generate),
                ("enhance 16", web_enhance, mlflow_enhance),
                ("page", web_page, mlflow_ping),
            ):
                a = measure(case, ours, users, n)
                b = measure(case, theirs, users, n)
                rows.append({"case": case, "users": users, "web": a, "mlflow": b})
                print(
                    f"{case:<12} {users} user{'s' if users > 1 else ' '}  web p50 {a['p50_ms']:8.1f} ms  "
                    f"p95 {a['p95_ms']:8.1f} ms   mlflow serve p50 {b['p50_ms']:8.1f} ms  p95 {b['p95_ms']:8.1f} ms"
                    f"   web/mlflow p50 {a['p50_ms'] / b['p50_ms']:.2f}x"
                    + (f"   errors: {a['errors'] + b['errors']}" if a["errors"] or b["errors"] else ""),
                    flush=True,
                )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    if args.store is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
