"""The CUDA paths, on a GPU only (marked ``cuda``; skipped without one): fp16 AMP with the grad scaler and its
exact resume, bf16, the pinned-memory loader, a 1-process NCCL group through the DDP code path, channels_last,
compile. ``bench/gpu.py`` runs them first (``pytest -m cuda tests/test_cuda.py``)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch

from dogcat import load_config, train
from dogcat.data import ResumableSampler, SeededItems, build_train_val, make_loader
from dogcat.engine import distributed
from dogcat.engine.checkpoint import load_checkpoint
from dogcat.engine.precision import candidates, choose_precision
from dogcat.models import build_model

from test_checkpoint import base, logged, weights

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.fixture(autouse=True)
def _cache_home(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # precision.json in tmp, not ~/.cache


def cuda_base(fmnist_dir: Path, runs: Path, **kw) -> dict:
    """The CPU tests' tiny Fashion-MNIST run (160 training images, batch 16), on the GPU."""
    return base(fmnist_dir, runs, device="cuda", **kw)


def test_fp16_grad_scaler_resumes_exactly(fmnist_dir, tmp_path):
    """fp16 autocast with the loss scaler: the scaler's state is checkpointed and an interrupted run
    (mid-epoch, then at an epoch's last batch) ends bit-identical to an uninterrupted one."""
    ref = train(load_config(cuda_base(fmnist_dir, tmp_path, precision="fp16", env="ref")))
    run = tmp_path / "cut"
    assert train(load_config(cuda_base(fmnist_dir, tmp_path, precision="fp16", env="cut", max_steps=4))).stopped
    ck = load_checkpoint(run / "checkpoints" / "last.pt")
    assert ck["device_type"] == "cuda" and ck["precision"] == "fp16"
    assert ck["scaler"]["scale"] > 0  # a live scaler, not the disabled one
    for max_steps in (10, None):
        train(load_config({"resume": str(run), "max_steps": max_steps}, config_file=run / "config.yaml"))
    a, b = weights(ref.run_dir), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logged(ref.run_dir) == logged(run)
    sa = load_checkpoint(ref.run_dir / "checkpoints" / "last.pt")["scaler"]
    sb = load_checkpoint(run / "checkpoints" / "last.pt")["scaler"]
    assert sa == sb


def test_bf16_and_auto_precision(fmnist_dir, tmp_path):
    res = train(load_config(cuda_base(fmnist_dir, tmp_path, precision="bf16", env="bf16")))
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    assert ck["precision"] == "bf16" and all(torch.isfinite(v).all() for v in ck["model"].values()
                                             if v.is_floating_point())
    device = torch.device("cuda")
    assert candidates(device)[0] == "fp32" and candidates(device)[1] in ("bf16", "fp16")
    model = build_model("smallcnn", 10, 1).to(device)
    choice, info = choose_precision(model, device, (1, 28, 28), 64, True, "smallcnn", 10)
    assert choice in candidates(device) and set(info["seconds"]) == set(candidates(device))


def test_pinned_memory_loader_and_non_blocking_copy(fmnist_dir):
    """On CUDA the loader pins its batches (also the arrays loaded in the main process), so the trainer's
    ``non_blocking`` copies overlap."""
    cfg = load_config({"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28,
                       "val_split": 0.2})
    data = build_train_val(cfg.data)
    sampler = ResumableSampler(len(data.train), 0)
    loader = make_loader(SeededItems(data.train), batch_size=16, num_workers=0, shuffle=False, seed=0,
                         sampler=sampler)
    assert loader.pin_memory
    batch = next(iter(loader))
    assert batch.images.is_pinned() and batch.labels.is_pinned()
    on_gpu = batch.images.to("cuda", non_blocking=True)
    assert data.batch_transform is not None
    x = data.batch_transform(on_gpu, batch.seed)
    assert x.device.type == "cuda" and x.dtype == torch.float32 and torch.isfinite(x).all()


class OneRank(distributed.Dist):
    """A group of one process that still takes every multi-process code path (DDP, collectives)."""

    @property
    def enabled(self) -> bool:
        return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_one_process_nccl_group_trains_through_ddp(fmnist_dir, tmp_path, monkeypatch):
    """The whole DDP training path (DDP wrapper, sharded validation, all-reduced meters, gathered checkpoint
    state, any_true, shutdown) on a real NCCL group of one process: one GPU cannot hold two NCCL ranks."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))

    def setup(device):
        torch.cuda.set_device(0)
        dist.init_process_group("nccl", rank=0, world_size=1, device_id=torch.device("cuda", 0))
        return OneRank(0, 1, 0), torch.device("cuda", 0)

    monkeypatch.setattr(distributed, "setup", setup)  # the trainer calls distributed.setup
    res = train(load_config(cuda_base(fmnist_dir, tmp_path, precision="bf16", deterministic=False, env="nccl")))
    assert not dist.is_initialized()  # shutdown() left the group
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    assert not any(k.startswith("module.") for k in ck["model"])  # unwrapped for a single process
    assert ck["state"]["world_size"] == 1 and len(ck["rng"]) == 1
    assert res.history[-1]["val_count"] == 40  # every validation image once


def test_channels_last_matches_contiguous():
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3).cuda().eval()
    x = torch.randn(8, 3, 64, 64, device="cuda")
    with torch.no_grad():
        ref = model(x)
        model.to(memory_format=torch.channels_last)
        assert model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
        out = model(x.contiguous(memory_format=torch.channels_last))
        with torch.autocast("cuda", dtype=torch.bfloat16):
            half = model(x.contiguous(memory_format=torch.channels_last)).float()
    torch.testing.assert_close(out, ref, rtol=1e-3, atol=1e-3)
    assert (half - ref).abs().max().item() < 0.1 * ref.abs().max().item()


def test_compile_trains_resumes_and_keeps_plain_keys(fmnist_dir, tmp_path):
    kw = dict(compile=True, precision="bf16", channels_last=True, deterministic=False)
    res = train(load_config(cuda_base(fmnist_dir, tmp_path, env="c", max_steps=3, **kw)))
    assert res.stopped
    ck = load_checkpoint(res.run_dir / "checkpoints" / "last.pt")
    assert not any("_orig_mod" in k for k in ck["model"])  # Module.compile() compiles in place
    done = train(load_config({"resume": str(res.run_dir)}, config_file=res.run_dir / "config.yaml"))
    assert not done.stopped and done.history[-1]["epoch"] == 2
    assert all(torch.isfinite(v).all() for v in weights(res.run_dir).values() if v.is_floating_point())
