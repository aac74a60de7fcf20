"""The training engine and the class-conditional GAN through the real entry points, on tiny assets:
exact resume, refusal to resume with other settings, generation, DDP with two gloo processes."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from productgen.models.gan import Discriminator, Generator, diffaugment
from productgen.training.checkpoint import load_state, save_state
from tests.conftest import BIN, run_cli


def _weights(run: Path) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("generator", "discriminator", "generator_raw"):
        out.update({f"{name}.{k}": v for k, v in load_file(str(run / "model" / f"{name}.safetensors")).items()})
    return out


def test_train_resume_is_bit_identical(params: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    full = run_cli("train", "gan", "--params", str(params), "--max-steps", "6", "--out", str(a), "-q", "--no-track")
    assert full.returncode == 0, full.stderr
    assert "trained to step 6" in full.stdout
    first = run_cli("train", "gan", "--params", str(params), "--max-steps", "4", "--out", str(b), "-q", "--no-track")
    assert first.returncode == 0, first.stderr
    again = run_cli("train", "gan", "--params", str(params), "--max-steps", "4", "--out", str(b), "-q", "--no-track")
    assert again.returncode == 2 and "--resume" in again.stderr  # never overwrites a run silently
    resumed = run_cli(
        "train", "gan", "--params", str(params), "--max-steps", "6", "--out", str(b), "--resume", "-q", "--no-track"
    )
    assert resumed.returncode == 0, resumed.stderr
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for run in (a, b):
        assert (run / "loss_curve.png").is_file() and (run / "samples" / "step-0000006.png").is_file()
    steps = [ln for ln in (b / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == 3  # steps 2, 4, 6: nothing logged twice after the resume


def test_resume_with_other_settings_is_refused(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "r"
    assert (
        run_cli(
            "train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(run), "-q", "--no-track"
        ).returncode
        == 0
    )
    p = run_cli(
        "train",
        "gan",
        "--params",
        str(params),
        "--max-steps",
        "4",
        "--out",
        str(run),
        "--resume",
        "--seed",
        "5",
        "-q",
        "--no-track",
    )
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and "different settings" in p.stderr and len(p.stderr.splitlines()) == 1


def test_generate_grid_and_folder(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "g"
    assert (
        run_cli(
            "train", "gan", "--params", str(params), "--max-steps", "2", "--out", str(run), "-q", "--no-track"
        ).returncode
        == 0
    )
    outs = []
    for i in range(2):
        p = run_cli(
            "generate",
            "--model",
            str(run / "model"),
            "--category",
            "shoes",
            "--n",
            "8",
            "--seed",
            "0",
            "--out",
            str(tmp_path / f"grid{i}.png"),
            "--folder",
            str(tmp_path / f"gen{i}"),
        )
        assert p.returncode == 0, p.stderr
        outs.append(sorted((tmp_path / f"gen{i}" / "shoes").glob("*.png")))
    assert len(outs[0]) == 8
    assert [f.read_bytes() for f in outs[0]] == [f.read_bytes() for f in outs[1]]  # same seed, same images
    bad = run_cli("generate", "--model", str(run / "model"), "--category", "hats", "--out", str(tmp_path / "x.png"))
    assert bad.returncode == 2 and "unknown category 'hats'" in bad.stderr and "bags" in bad.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ddp_two_gloo_processes(params: Path, tmp_path: Path) -> None:
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    cmd = [
        str(BIN / "torchrun"),
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(_free_port()),
        "-m",
        "productgen",
        "train",
        "gan",
        "--params",
        str(params),
        "--max-steps",
        "4",
        "--out",
        str(run),
        "-q",
    ]
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "trained to step 4" in p.stdout
    assert '"world_size": 2' in (run / "train_config.json").read_text()
    state = load_state(run / "checkpoints" / "ckpt-00000004.safetensors")
    assert state["step"] == 4
    # each rank's own RNG streams are in the checkpoint (rank 0's alone made every DDP resume inexact)
    ranks = state["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["step"], ranks[1]["step"])
    assert torch.equal(ranks[0]["step"], state["rng"]["step"])


@pytest.mark.parametrize("resolution", [28, 32, 64, 128])
def test_networks_cover_28_to_128(resolution: int) -> None:
    g = Generator(resolution, 3, 5, z_dim=8, base=8, cap=16, embed_dim=8)
    d = Discriminator(resolution, 3, 5, base=8, cap=16)
    y = torch.tensor([0, 4])
    x = g(torch.randn(2, 8), y)
    assert x.shape == (2, 3, resolution, resolution) and x.abs().max() <= 1
    assert d(x, y).shape == (2,)


def test_self_modulation_starts_as_plain_batchnorm_and_lets_z_steer_every_layer() -> None:
    torch.manual_seed(0)
    g = Generator(28, 1, 3, z_dim=8, base=8, cap=16, embed_dim=8, self_modulation=True)
    norms = [m for m in g.modules() if hasattr(m, "gamma_fc")]
    assert len(norms) == 3 and all(float(m.gamma_fc.weight.abs().sum()) == 0 for m in norms)  # gain 1, bias 0
    x = torch.randn(4, 16, 7, 7)
    cond = torch.randn(4, 16)
    torch.testing.assert_close(norms[0](x, torch.zeros(4, dtype=torch.long), cond), norms[0].bn(x))
    torch.nn.init.normal_(norms[0].gamma_fc.weight)  # once trained, z changes the gains of this layer too
    assert not torch.allclose(norms[0](x, torch.zeros(4, dtype=torch.long), cond), norms[0].bn(x))


def test_diffaugment_is_reproducible_from_its_generator() -> None:
    x = torch.randn(4, 3, 32, 32)
    a = diffaugment(x, "color,translation,cutout", torch.Generator().manual_seed(1))
    b = diffaugment(x, "color,translation,cutout", torch.Generator().manual_seed(1))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)


def test_checkpoint_round_trip_keeps_structure(tmp_path: Path) -> None:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.0, 0.9))
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    state = {"step": 7, "opt": opt.state_dict(), "rng": torch.get_rng_state(), "t": (1, 2.5, None, "x")}
    loaded = load_state(save_state(tmp_path / "c.safetensors", state))
    assert loaded["step"] == 7 and loaded["t"] == (1, 2.5, None, "x")
    assert torch.equal(loaded["rng"], state["rng"])
    assert set(loaded["opt"]["state"]) == {0, 1}  # integer keys survive
    opt2 = torch.optim.Adam(model.parameters(), lr=1e-3)
    opt2.load_state_dict(loaded["opt"])
    assert torch.equal(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_lr_scale_holds_then_falls_linearly_to_the_last_step() -> None:
    from productgen.training.gan_task import lr_scale

    assert [lr_scale(s, 10, 0.5) for s in range(10)] == [1, 1, 1, 1, 1, 1, 0.8, 0.6, 0.4, 0.2]
    assert {lr_scale(s, 10, 1.0) for s in range(10)} == {1.0}  # the default: constant
    assert lr_scale(0, 4, 0.0) == 1.0 and lr_scale(3, 4, 0.0) == 0.25  # from the first step; never 0


def test_lr_decay_through_train_sets_each_steps_lr_and_is_recorded(params: Path, tmp_path: Path) -> None:
    """The checkpoint's optimizers hold the last step's lr (base x 1/3 for 6 steps decaying from step 3); the
    model's config records the schedule; constant-lr configs keep their old form (so old checkpoints resume)."""
    import json

    from productgen.training.checkpoint import load_state

    decay = tmp_path / "decay.yaml"
    decay.write_text(params.read_text().rstrip("\n") + "\n  lr_decay_start: 0.5\n")
    runs = {"decay": (decay, tmp_path / "d"), "const": (params, tmp_path / "c")}
    for p, out in runs.values():
        r = run_cli("train", "gan", "--params", str(p), "--max-steps", "6", "--out", str(out), "-q", "--no-track")
        assert r.returncode == 0, r.stderr
    state = load_state(tmp_path / "d" / "checkpoints" / "ckpt-00000006.safetensors")
    for name in ("G", "D"):
        assert state["optimizers"][name]["param_groups"][0]["lr"] == pytest.approx(2e-4 / 3)
    const = load_state(tmp_path / "c" / "checkpoints" / "ckpt-00000006.safetensors")
    assert const["optimizers"]["G"]["param_groups"][0]["lr"] == pytest.approx(2e-4)
    assert json.loads((tmp_path / "d" / "model" / "config.json").read_text())["gan"]["lr_decay_start"] == 0.5
    assert "lr_decay_start" not in json.loads((tmp_path / "c" / "model" / "config.json").read_text())["gan"]
    wd, wc = _weights(tmp_path / "d"), _weights(tmp_path / "c")  # same seed and data: only the lr differs
    assert any(not torch.equal(wd[k], wc[k]) for k in wd if k.startswith("generator_raw."))


def test_lr_decay_start_outside_0_1_is_one_line_error(params: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(params.read_text().rstrip("\n") + "\n  lr_decay_start: 1.5\n")
    r = run_cli(
        "train", "gan", "--params", str(bad), "--max-steps", "2", "--out", str(tmp_path / "r"), "-q", "--no-track"
    )
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "gan.lr_decay_start" in r.stderr
    assert len(r.stderr.splitlines()) == 1
