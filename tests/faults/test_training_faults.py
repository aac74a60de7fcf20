"""Fault injection for training, checkpoints, tracking and folder locks (issue 13; docs/reliability.md).

Every test injects a fault an operator really meets (kill -9 at a random step or inside a checkpoint write, a
checkpoint damaged on disk, a torn log line, a diverging run, a tracking server that is not there or dies
mid-run, a second writer) into the real entry points (the ``productgen`` command in a subprocess, or the same
Typer app in-process where no process has to die), and asserts what the user sees (exit status, one line, no
traceback) and that nothing is lost (final weights bit-identical to an uninterrupted run, intact checkpoints
kept, every step in metrics.jsonl, weights written whatever the tracking server does).

Sizes: the tiny GAN of tests/conftest.py, a few steps; one intra-op thread everywhere (in-process runs and
subprocesses alike), so runs of the two kinds are bit-comparable.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors.torch import load_file
from typer.testing import CliRunner

from productgen.cli import app
from productgen.training.checkpoint import checkpoints, load_state, save_state, verify
from tests.conftest import BIN, TINY

# ---- helpers -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread in-process, as OMP_NUM_THREADS=1 gives the subprocesses: bit-comparable weights."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cli(*args: str) -> Any:
    """The ``productgen`` command in-process (same Typer app, same stdout/stderr as a user sees)."""
    return CliRunner().invoke(app, list(args))


def spawn(*args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "productgen"), *args],
        env=env or _env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kw,
    )


def one_error_line(stderr: str, *fragments: str) -> str:
    """The single non-empty stderr line: ``error: ...``, no traceback, with every fragment in it."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def no_traceback(result: Any) -> None:
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output


def weights(run: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted((run / "model").glob("*.safetensors")):
        out.update({f"{f.stem}.{k}": v for k, v in load_file(str(f)).items()})
    return out


def same_weights(a: Path, b: Path) -> bool:
    wa, wb = weights(a), weights(b)
    return bool(wa) and wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def tree(run: Path) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def variants(params: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """params.yaml variants of the tiny GAN of tests/conftest.py."""
    root = tmp_path_factory.mktemp("fault-params")
    base = yaml.safe_load(TINY.format(prepared=params.parent / "prepared"))

    def make(name: str, train: dict[str, Any], gan: dict[str, Any] | None = None) -> Path:
        doc = json.loads(json.dumps(base))
        doc["train"].update(train)
        doc["gan"].update(gan or {})
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump(doc))
        return path

    return {
        "keep3": make("keep3", {"keep_checkpoints": 3}),
        "every-step": make("every-step", {"checkpoint_every": 1, "keep_checkpoints": 3, "sample_every": 100}),
        "diverge": make("diverge", {"checkpoint_every": 1, "keep_checkpoints": 3}, {"lr_g": 1e10, "lr_d": 1e10}),
        "tracked": make("tracked", {"log_every": 1, "checkpoint_every": 100, "sample_every": 1000}),
    }


def train_args(p: Path, out: Path, steps: int, *extra: str) -> list[str]:
    return ["train", "gan", "--params", str(p), "--max-steps", str(steps), "--out", str(out), "-q", *extra]


@pytest.fixture(scope="module")
def base_run(variants: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted in-process run to step 6 keeping checkpoints 2, 4 and 6: the reference."""
    run = tmp_path_factory.mktemp("base") / "run"
    r = cli(*train_args(variants["keep3"], run, 6, "--no-track"))
    assert r.exit_code == 0, r.output
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2, 4, 6]
    return run


# ---- damaged checkpoints, torn log line, divergence, whole-folder model swap --------------------------------


def _damage(path: Path, kind: str) -> None:
    data = bytearray(path.read_bytes())
    header = int.from_bytes(data[:8], "little")
    if kind == "truncated":
        data = data[: len(data) * 2 // 3]
    elif kind == "tensor-bytes":  # 8 KB of tensor data flipped (the probe's case: NaN losses, NaN model)
        start = 8 + header + 64
        for i in range(start, min(start + 8192, len(data))):
            data[i] ^= 0xFF
    elif kind == "header-byte":  # one byte of the JSON header (the probe's KeyError: 'config' traceback)
        data[8 + header // 2] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["truncated", "tensor-bytes", "header-byte"])
def test_resume_skips_a_damaged_newest_checkpoint(
    kind: str, base_run: Path, variants: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    newest = run / "checkpoints" / "ckpt-00000006.safetensors"
    _damage(newest, kind)
    assert verify(newest) is not None and verify(run / "checkpoints" / "ckpt-00000004.safetensors") is None
    r = cli(*train_args(variants["keep3"], run, 6, "--no-track", "--resume"))
    assert r.exit_code == 0, r.output
    no_traceback(r)
    warnings = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(warnings) == 1 and "ckpt-00000006.safetensors: damaged" in warnings[0], r.stderr
    assert same_weights(run, base_run)  # resumed from step 4: nothing lost, bit-identical to the reference
    assert (run / "checkpoints" / "ckpt-00000006.safetensors.damaged").is_file()  # kept for inspection
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2, 4, 6]
    assert all(verify(p) is None for _, p in checkpoints(run / "checkpoints"))


def test_pruning_never_deletes_the_last_verified_checkpoint(base_run: Path, tmp_path: Path) -> None:
    """The probe's run resumed from a damaged checkpoint and pruning then deleted the last intact one. A new
    checkpoint is read back and verified before anything older goes; one that reads back wrong (a failing disk)
    prunes nothing."""
    from productgen.training.checkpoint import prune_checkpoints

    folder = tmp_path / "checkpoints"
    shutil.copytree(base_run / "checkpoints", folder)
    newest = folder / "ckpt-00000006.safetensors"
    _damage(newest, "tensor-bytes")
    problem = prune_checkpoints(folder, keep=1, newest=newest)
    assert problem is not None and "checksum mismatch" in problem
    assert [s for s, _ in checkpoints(folder)] == [2, 4, 6]  # nothing pruned: ckpt-4 is the last verified
    shutil.copy2(base_run / "checkpoints" / newest.name, newest)
    assert prune_checkpoints(folder, keep=1, newest=newest) is None
    assert [s for s, _ in checkpoints(folder)] == [6]


def test_no_intact_checkpoint_refuses_in_one_line(base_run: Path, variants: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    for (_, p), kind in zip(checkpoints(run / "checkpoints"), ["header-byte", "tensor-bytes", "truncated"]):
        _damage(p, kind)
    model_before = tree(run / "model")
    r = cli(*train_args(variants["keep3"], run, 8, "--no-track", "--resume"))
    assert r.exit_code == 2, r.output
    no_traceback(r)
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1 and "no intact checkpoint" in errors[0], r.stderr
    assert tree(run / "model") == model_before  # the last exported model is untouched


def test_torn_metrics_line_is_dropped_with_a_warning(base_run: Path, variants: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    (run / "model" / "stale-from-an-old-step.safetensors").write_bytes(b"x")
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as fh:
        fh.write('{"step": 8, "loss_d": 0.6')  # power cut during an append: no closing brace, no newline
    r = cli(*train_args(variants["keep3"], run, 8, "--no-track", "--resume"))
    assert r.exit_code == 0, r.output
    no_traceback(r)
    assert "metrics.jsonl: dropped its last line" in r.stderr
    steps = [json.loads(ln)["step"] for ln in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8]
    # model/ was replaced as a whole: no file of an earlier export survives next to the new weights
    assert not (run / "model" / "stale-from-an-old-step.safetensors").exists()
    assert json.loads((run / "model" / "config.json").read_text())["step"] == 8


def test_non_finite_loss_stops_naming_the_step(variants: dict[str, Path], tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = cli(*train_args(variants["diverge"], run, 8, "--no-track"))
    assert r.exit_code == 1, r.output
    no_traceback(r)
    line = one_error_line(r.stderr, "diverged", "at step 2", "ckpt-00000001.safetensors")
    assert "model/ was not written" in line
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [1]  # the last good one, intact
    state = load_state(run / "checkpoints" / "ckpt-00000001.safetensors")
    assert all(torch.isfinite(t).all() for t in state["modules"]["G"].values())
    assert not (run / "model").exists()
    log = run / "metrics.jsonl"
    assert not log.exists() or "NaN" not in log.read_text()  # nothing of the diverged step was logged


def test_a_valid_checkpoint_with_nan_weights_never_exports(
    base_run: Path, variants: dict[str, Path], tmp_path: Path
) -> None:
    """Non-finite weights that slipped into a checkpoint (written intact, checksum and all) stop at the first
    step: the exported model from before stays as it was."""
    run = tmp_path / "run"
    shutil.copytree(base_run, run)
    path = run / "checkpoints" / "ckpt-00000006.safetensors"
    state = load_state(path)
    first = next(iter(state["modules"]["G"]))
    state["modules"]["G"][first] = torch.full_like(state["modules"]["G"][first], float("nan"))
    save_state(path, state)
    model_before = tree(run / "model")
    r = cli(*train_args(variants["keep3"], run, 8, "--no-track", "--resume"))
    assert r.exit_code == 1, r.output
    one_error_line(r.stderr, "at step 7", "ckpt-00000006.safetensors")
    assert tree(run / "model") == model_before
    assert [s for s, _ in checkpoints(run / "checkpoints")] == [2, 4, 6]


# ---- kill -9 inside a checkpoint write and at a random step; a second writer; a stale lock --------------------


def _wait_for_temp(proc: subprocess.Popen[str], folder: Path, deadline: float, min_step: int) -> Path:
    """Stop ``proc`` (SIGSTOP) the moment a checkpoint temp file (of ``min_step`` or later) exists, so it is
    killed mid-write."""
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            time.sleep(0.05)  # still importing: leave the CPU to it
            continue
        tmp = next((n for n in names if n.startswith(".ckpt-") and ".tmp-" in n and int(n[6:14]) >= min_step), None)
        if tmp is None:
            time.sleep(0.0002)  # a write (with its fsync) stays visible for milliseconds
            continue
        os.kill(proc.pid, signal.SIGSTOP)
        if (folder / tmp).exists():
            return folder / tmp
        os.kill(proc.pid, signal.SIGCONT)  # it renamed it in between: catch the next one
    raise AssertionError(f"no checkpoint temp file seen (exit {proc.poll()})")


def test_kill_inside_a_checkpoint_write_second_writer_and_kill_at_a_random_step(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    p = variants["every-step"]
    ref, run = tmp_path / "ref", tmp_path / "run"
    assert cli(*train_args(p, ref, 12, "--no-track")).exit_code == 0

    a = spawn(*train_args(p, run, 12, "--no-track"))
    try:
        tmp = _wait_for_temp(a, run / "checkpoints", time.monotonic() + 120, min_step=3)
        # A is frozen mid-write and holds the run folder: a second writer is refused at once, naming A
        second = cli(*train_args(p, run, 12, "--no-track", "--resume"))
        assert second.exit_code == 2
        one_error_line(second.stderr, f"PID {a.pid}", "being written by another process")
        os.kill(a.pid, signal.SIGKILL)
    finally:
        a.kill()
        a.wait()
    assert tmp.exists()  # the orphan an interrupted write leaves
    assert (run.parent / ".run.lock").exists()  # stale lock file of the killed process: must not block

    b = spawn(*train_args(p, run, 12, "--no-track", "--resume"))
    caught = int(tmp.name[6:14])  # in practice step 3 or 4: the temp file is caught at its first or second write
    target = random.Random().randint(caught + 1, max(caught + 1, 10))  # a random later step
    deadline = time.monotonic() + 120
    while b.poll() is None and time.monotonic() < deadline:
        if (run / "checkpoints" / f"ckpt-{target:08d}.safetensors").exists():
            time.sleep(random.uniform(0, 0.05))
            b.send_signal(signal.SIGKILL)
            break
        time.sleep(0.002)
    _, b_err = b.communicate(timeout=60)
    assert b.returncode == -signal.SIGKILL, (b.returncode, b_err)
    assert "removed 1 temp file(s) of an interrupted run" in b_err and tmp.name in b_err
    assert not tmp.exists()

    final = cli(*train_args(p, run, 12, "--no-track", "--resume"))
    assert final.exit_code == 0, final.output
    no_traceback(final)
    assert same_weights(run, ref)  # two kills, nothing lost: bit-identical to the uninterrupted run
    assert not any(".tmp-" in n for n in os.listdir(run / "checkpoints"))
    assert not (run.parent / ".run.lock").exists()  # released (and removed) by the clean end
    assert all(verify(c) is None for _, c in checkpoints(run / "checkpoints"))


def test_second_prepare_into_one_folder_is_refused_and_a_dead_holder_does_not_block(
    params: Path, tmp_path: Path
) -> None:
    shop = params.parent / "shop"
    out = tmp_path / "prepared"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from productgen.common.locks import folder_lock\n"
            "with folder_lock(sys.argv[1], 'x'):\n    print('held', flush=True); time.sleep(120)",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        r = cli("data", "prepare", "--source", "folder", "--input", str(shop), "--out", str(out))
        assert r.exit_code == 2
        one_error_line(r.stderr, f"PID {holder.pid}", str(out))
        assert not out.exists()
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, the lock goes with the process
        holder.wait()
    r = cli("data", "prepare", "--source", "folder", "--input", str(shop), "--out", str(out))
    assert r.exit_code == 0, r.output
    assert (out / "dataset.json").is_file()


# ---- tracking server: nothing listening; a real server killed mid-run ----------------------------------------


def test_tracking_uri_with_nothing_listening_stops_in_one_line_before_any_work(
    variants: dict[str, Path], tmp_path: Path
) -> None:
    run = tmp_path / "run"
    uri = f"http://127.0.0.1:{_free_port()}"
    t0 = time.monotonic()
    proc = subprocess.run(
        [str(BIN / "productgen"), *train_args(variants["keep3"], run, 4)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(MLFLOW_TRACKING_URI=uri),
    )
    elapsed = time.monotonic() - t0
    assert proc.returncode == 2, proc.stderr
    one_error_line(proc.stderr, uri, "does not answer", "--no-track")
    assert elapsed < 15, elapsed  # the old code retried for about 4 minutes, then printed 156 lines
    assert not run.exists()  # stopped before any work


def test_metrics_logger_never_blocks_on_a_dead_server(monkeypatch: pytest.MonkeyPatch) -> None:
    from productgen.tracking.runs import RunLogger

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")
    logger = RunLogger("0" * 32, max_pending=50, attempts=2, backoff_s=0.05)
    t0 = time.monotonic()
    for step in range(1, 101):
        logger.log_step(step, {"loss": 1.0 / step, "other": 2.0})
    assert time.monotonic() - t0 < 0.5  # the loop never waits for the server
    t1 = time.monotonic()
    lost = logger.close(timeout=10)
    assert time.monotonic() - t1 < 10
    assert lost == 200 and logger.down  # bounded queue (oldest dropped) and bounded retries, all counted
    report = logger.report()
    assert report is not None and "200 metric value(s) not logged" in report and "does not answer" in report


def _launch_mlflow_server(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    log = open(root / "mlflow-server.log", "wb")  # noqa: SIM115 - closed with the process
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{root / 'server.db'}",
            "--artifacts-destination",
            str(root / "art"),
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}"


def _wait_healthy(proc: subprocess.Popen[bytes], uri: str, root: Path) -> None:
    deadline = time.monotonic() + 90
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError((root / "mlflow-server.log").read_text()[-2000:])
        try:
            with opener.open(f"{uri}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError("mlflow server did not become healthy in 90 s")


@pytest.fixture(scope="module", autouse=True)
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen[bytes], str, Path]]:
    """A real ``mlflow server`` (one worker, no job execution, SQLite store, loopback), launched when this module
    starts so that its ~8 s start-up overlaps the other tests; the test that kills it waits for it to be healthy."""
    root = tmp_path_factory.mktemp("mlflow-server")
    proc, uri = _launch_mlflow_server(root)
    yield proc, uri, root
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_tracking_server_killed_mid_run_never_blocks_and_weights_are_written(
    variants: dict[str, Path], tmp_path: Path, mlflow_server: tuple[subprocess.Popen[bytes], str, Path]
) -> None:
    server, uri, root = mlflow_server
    _wait_healthy(server, uri, root)
    run = tmp_path / "run"
    steps = 25
    try:
        proc = spawn(*train_args(variants["tracked"], run, steps), env=_env(MLFLOW_TRACKING_URI=uri))
        log = run / "metrics.jsonl"
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if log.exists() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.01)
        assert proc.poll() is None, proc.communicate()
    finally:
        os.killpg(server.pid, signal.SIGKILL)  # the tracking server dies mid-run
        server.wait()
    t_kill = time.monotonic()
    out, err = proc.communicate(timeout=120)
    after_kill = time.monotonic() - t_kill
    assert proc.returncode == 1, (out, err)
    line = one_error_line(err, "tracking incomplete", uri, "--resume")
    assert "metrics.jsonl" in line
    assert after_kill < 30, after_kill  # the old code blocked ~8 minutes inside metric logging
    assert [json.loads(ln)["step"] for ln in log.read_text().splitlines()] == list(range(1, steps + 1))
    w = weights(run)
    assert w and all(torch.isfinite(t).all() for t in w.values() if t.is_floating_point())
    assert json.loads((run / "model" / "config.json").read_text())["step"] == steps
