"""The GPU benchmarks' own code, on the CPU at tiny sizes: the DCGAN baseline is the pytorch/examples network
(its published parameter counts), trains one engine step, and the generator runner reads its run specs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

from productgen.config import TrainConfig
from productgen.training.device import init_runtime
from productgen.training.engine import Engine

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def test_dcgan_is_the_examples_network_and_trains_one_engine_step(tmp_path: Path) -> None:
    dc = bench_module("bench_dcgan")
    g, d = dc.DCGANGenerator(), dc.DCGANDiscriminator()
    # the PyTorch DCGAN tutorial's printed counts for nc 3, nz 100, ngf = ndf = 64
    assert sum(p.numel() for p in g.parameters()) == 3_576_704
    assert sum(p.numel() for p in d.parameters()) == 2_765_568
    with torch.no_grad():
        x = g(torch.randn(2, dc.NZ, 1, 1))
        y = d(x)
    assert x.shape == (2, 3, 64, 64) and float(x.abs().max()) <= 1.0
    assert y.shape == (2,) and bool(((y > 0) & (y < 1)).all())

    cfg = TrainConfig(batch_size=2, max_steps=1, device="cpu", precision="fp32")
    engine = Engine(cfg, init_runtime("cpu", "fp32"), tmp_path)
    task = dc.DcganTask(engine, 3)
    before = [p.detach().clone() for p in task.modules["G"].parameters()]
    images = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    losses = task.train_step(engine, images, torch.zeros(2, dtype=torch.long))
    assert all(bool(torch.isfinite(v)) for v in losses.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, task.modules["G"].parameters()))


def test_generator_runner_reads_run_specs_and_skips_unknown_fields() -> None:
    gg = bench_module("gpu_gan")
    task, name, path, over = gg.parse_run("gan:w96:gpu-gan:gan.g_channels=96,train.compile=true,gan.diffaugment=")
    assert (task, name, path.name) == ("gan", "w96", "gpu-gan.yaml")
    assert over == {"gan.g_channels": 96, "train.compile": True, "gan.diffaugment": ""}
    assert gg.unknown_fields({"gan.g_channels": 96, "train.compile": True}) == []
    assert gg.unknown_fields({"gan.no_such_field": 1, "nosection.x": 2}) == ["gan.no_such_field", "nosection.x"]
