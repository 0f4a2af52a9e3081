"""The template's last TensorBoard items, read back with TensorBoard's own readers: the model graph (event_accumulator)
and the projector's embeddings (projector_config.pbtxt, its tensors, metadata and sprite)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from dogcat import load_config, train
from dogcat.tracking.embeddings import spread, trace_graph, untraceable


def opts(fmnist_dir: Path, runs: Path, **kw) -> dict:
    return {"fashion_mnist_root": str(fmnist_dir), "dataset": "fashion-mnist", "image_size": 28, "model": "fastcnn",
            "batch_size": 32, "val_split": 0.25, "max_epoch": 2, "progress": "none", "debug_file": None,
            "runs_root": str(runs), "keep_top_k": 0, **kw}


def projector(run: Path):
    from google.protobuf import text_format
    from tensorboard.plugins.projector.projector_config_pb2 import ProjectorConfig

    return text_format.Parse((run / "projector_config.pbtxt").read_text(), ProjectorConfig())


def test_graph_and_embeddings_read_back_across_a_resume(fmnist_dir, tmp_path):
    """150 training images, batch 32: 5 steps an epoch. The first session stops at step 6 (one embedding, at
    epoch 1), the resumed one adds epoch 2's without dropping the first from the projector's config."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "cut"
    train(load_config(opts(fmnist_dir, tmp_path, env="cut", embeddings_every=1, max_steps=6)))
    assert len(projector(run).embeddings) == 1
    train(load_config({"resume": str(run)}, config_file=run / "config.yaml"))

    acc = EventAccumulator(str(run))
    acc.Reload()
    assert acc.Tags()["graph"]
    ops = {node.op for node in acc.Graph().node}
    assert any("conv" in op.lower() for op in ops), ops  # the traced model's ops, as the Graphs tab shows them

    config = projector(run)
    assert len(config.embeddings) == 2
    for emb in config.embeddings:
        assert emb.tensor_name.startswith("val_penultimate")
        tensors = np.loadtxt(run / emb.tensor_path, delimiter="\t", ndmin=2)
        assert tensors.shape == (50, 64)  # 50 validation images; fastcnn's head takes 64 features
        meta = (run / emb.metadata_path).read_text().splitlines()
        assert meta[0] == "label\tpredicted" and len(meta) == 51
        assert (run / emb.sprite.image_path).is_file() and list(emb.sprite.single_image_dim) == [32, 32]


def test_compiled_and_untraceable_models_are_skipped_with_a_reason():
    class Writer:
        def add_graph(self, model, example):
            torch.jit.trace(model, example)

    class Branchy(nn.Module):
        def forward(self, x):
            return x.tolist()  # not a tensor: tracing fails

    m = nn.Linear(2, 2)
    m._compiled_call_impl = m._call_impl  # what Module.compile() sets (torch.compile itself takes 5 s to import)
    assert "compiled" in untraceable(m)
    assert "compiled" in trace_graph(Writer(), m, torch.zeros(1, 2))
    assert trace_graph(Writer(), Branchy(), torch.zeros(1, 2)).startswith("tracing failed")
    assert trace_graph(Writer(), nn.Linear(2, 2), torch.zeros(1, 2)) is None


@pytest.mark.parametrize("n", [3, 1000, 5000])
def test_spread_is_even_and_capped(n):
    idx = spread(n)
    assert len(idx) == min(n, 1000) and idx == sorted(set(idx)) and idx[0] == 0 and idx[-1] < n
