"""The Python habits of Lightning and fastai users: your own nn.Module and data (a torch Dataset, a pandas
DataFrame) without registering, embed, numpy predict, top-k, the Classifier's repr, result.load(), the
notebook's live epoch table without TqdmWarning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

import dogcat
from dogcat.config import ConfigError, load_config
from dogcat.data import DataError
from dogcat.tracking.progress import EpochTable, epoch_table_html

from datagen import TINY, make_folder, pattern


class Net(nn.Module):
    """A user's own module: not registered anywhere."""

    def __init__(self, n: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(8, n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x))


class Pictures(torch.utils.data.Dataset):
    """(image, label) pairs as a user writes them: PIL images, numpy arrays and uint8 tensors mixed."""

    classes = ["plain", "striped"]

    def __init__(self, n: int = 16) -> None:
        rng = np.random.default_rng(0)
        self.items = [(pattern(i % 2, 36, 44, rng), i % 2) for i in range(n)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        arr, y = self.items[i]
        kinds = (Image.fromarray(arr), arr, torch.from_numpy(arr).permute(2, 0, 1).contiguous())
        return kinds[i % 3], y


OPTS = {k: v for k, v in TINY.items() if k != "model"} | {"val_split": 0.25}


@pytest.fixture(scope="module")
def own_run(tmp_path_factory):
    """A run of Net on a torch Dataset; (result, runs root)."""
    runs = tmp_path_factory.mktemp("runs")
    result = dogcat.train(model=Net(), train_data=Pictures(), runs_root=str(runs), **OPTS)
    return result, runs


def test_own_module_on_a_dataset_trains_checkpoints_and_reloads_with_the_module(own_run):
    result, _ = own_run
    cfg = load_config(base=None, config_file=str(result.run_dir / "config.yaml"))
    assert cfg.model.model == f"custom:{__name__}.Net" and cfg.data.dataset == "python"
    assert (result.run_dir / "checkpoints" / "best.pt").is_file() and result.history[0]["epoch"] == 1
    assert any(result.run_dir.glob("events.out.tfevents.*"))
    # the checkpoint names the class as text only: loading needs the module again, one line without it
    with pytest.raises(ConfigError, match=r"your own module .*Net.*dogcat.load\(RUN, model=Net\(\)\)"):
        dogcat.load(result.run_dir)
    model = result.model
    assert isinstance(model, Net) and not model.training
    ckpt = torch.load(result.run_dir / "checkpoints" / "best.pt", weights_only=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, ckpt["model"][k])
    clf = dogcat.load(result.run_dir, model=Net())
    again = result.load()
    x = np.asarray(Pictures()[1][0])
    assert clf.predict(x)[0]["probs"] == pytest.approx(again.predict(x)[0]["probs"])


def test_own_module_resumes_only_with_the_module_and_the_dataset(own_run, tmp_path):
    result, _ = own_run
    with pytest.raises(ConfigError, match="pass it again"):
        dogcat.train(resume=str(result.run_dir), max_epoch=2)
    with pytest.raises(DataError, match="torch Dataset given in Python"):
        dogcat.train(resume=str(result.run_dir), max_epoch=2, model=Net())
    # a copy: the module-scoped run stays at one epoch for the other tests
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(result.run_dir, copy)
    resumed = dogcat.train(resume=str(copy), max_epoch=2, model=Net(), train_data=Pictures())
    assert [r["epoch"] for r in resumed.history] == [2]


def test_a_module_that_does_not_fit_is_one_line_before_a_run_folder(tmp_path):
    with pytest.raises(dogcat.models.ModelError, match=r"logits of shape \(2, 2\)"):
        dogcat.train(model=Net(5), train_data=Pictures(), runs_root=str(tmp_path / "runs"), **OPTS)
    with pytest.raises(DataError, match="name the classes"):
        dogcat.train(model=Net(), train_data=torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8),
                                                                           torch.zeros(4, dtype=torch.long)),
                     runs_root=str(tmp_path / "runs"), **OPTS)
    assert not (tmp_path / "runs").exists()


@pytest.fixture(scope="module")
def frame_run(tmp_path_factory):
    """A smallcnn run on a DataFrame of paths and labels (columns file, kind); (result, image folder, frame)."""
    pd = pytest.importorskip("pandas")
    tmp = tmp_path_factory.mktemp("frame")
    root = make_folder(tmp / "imgs", classes=("ant", "bee"), n_per_class=6)
    files = sorted(root.glob("*/*.jpg"))
    frame = pd.DataFrame({"file": [str(f) for f in files], "kind": [f.parent.name for f in files]})
    result = dogcat.train(train_data=frame, path_column="file", label_column="kind", model="smallcnn",
                          runs_root=str(tmp / "runs"), **OPTS)
    return result, root, frame


def test_dataframe_of_paths_and_labels_trains_as_a_list_file_and_resumes_without_it(frame_run, tmp_path):
    result, _, frame = frame_run
    with pytest.raises(DataError, match="no column 'path'"):
        dogcat.train(model="smallcnn", train_data=frame, runs_root=str(tmp_path / "runs"), **OPTS)
    cfg = load_config(base=None, config_file=str(result.run_dir / "config.yaml"))
    assert cfg.data.dataset == "list" and Path(cfg.data.train_list) == result.run_dir / "splits" / "train.csv"
    assert dogcat.load(result.run_dir).class_names == ["ant", "bee"]


@pytest.mark.slow
def test_a_dataframe_run_evaluates_and_resumes_from_its_recorded_lists(frame_run):
    result = frame_run[0]
    metrics = dogcat.evaluate(result.run_dir)  # `dogcat val RUN` reads the recorded list files
    assert metrics["class_names"] == ["ant", "bee"] and sum(map(sum, metrics["confusion"])) == 4
    resumed = dogcat.train(resume=str(result.run_dir), max_epoch=2)  # the frame is not needed again
    assert [r["epoch"] for r in resumed.history] == [2]


def test_embed_is_the_input_of_the_head_and_numpy_predict_matches_files(own_run, tmp_path):
    result, _ = own_run
    clf = result.load()
    arrays = [Pictures().items[i][0] for i in (0, 1)]
    paths = []
    for i, a in enumerate(arrays):
        paths.append(tmp_path / f"{i}.png")  # lossless: the file holds the array's pixels
        Image.fromarray(a).save(paths[-1])
    feats = dogcat.embed(clf, arrays)
    assert feats.shape == (2, 8) and feats.dtype == np.float32
    with torch.no_grad():
        x = torch.stack([clf.transform(torch.from_numpy(a).permute(2, 0, 1)) for a in arrays])
        manual = clf.model.body(x).numpy()
    np.testing.assert_allclose(feats, manual, rtol=1e-5, atol=1e-6)
    (tmp_path / "broken.jpg").write_bytes(b"not a picture")
    rows = dogcat.embed(result.run_dir, [*map(str, paths), str(tmp_path / "broken.jpg")], model=Net())
    np.testing.assert_allclose(rows[:2], feats, rtol=1e-5, atol=1e-6)
    assert np.isnan(rows[2]).all()  # row i is input i; the unreadable file's row is NaN
    from_files = clf.predict([str(p) for p in paths])
    from_arrays = clf.predict(np.stack(arrays))  # NHWC: a batch
    for f, a in zip(from_files, from_arrays):
        assert f["probs"] == pytest.approx(a["probs"], abs=1e-6) and f["class"] == a["class"]


def test_top_k_is_ordered_and_bounded_by_the_classes(own_run):
    result, _ = own_run
    clf = result.load()
    row = clf.predict(np.asarray(Pictures()[0][0]), top_k=2)[0]
    top = row["top_k"]
    assert [t["class"] for t in top] == sorted(row["probs"], key=lambda c: -row["probs"][c])
    assert [t["probability"] for t in top] == [row["probs"][t["class"]] for t in top]
    assert top[0]["class"] == row["class"] and "top_k" not in clf.predict(np.asarray(Pictures()[0][0]))[0]
    with pytest.raises(ConfigError, match=r"top_k=3 .* 2 classes"):
        clf.predict(np.asarray(Pictures()[0][0]), top_k=3)


def test_classifier_repr_is_one_short_line(own_run):
    text = repr(own_run[0].load())
    assert "\n" not in text and len(text) < 400
    assert text.startswith(f"Classifier(model=custom:{__name__}.Net, classes=['plain', 'striped'], image_size=32")
    assert "device=cpu" in text and "backend=pytorch" in text


def test_cli_predict_top_k_and_embed(frame_run, own_run, tmp_path, capsys):
    from dogcat.cli import main

    result, root, _ = frame_run
    run, imgs = str(result.run_dir), str(root / "ant")
    capsys.readouterr()
    assert main(["predict", run, imgs, "--top-k=2", "--output=-"]) == 0
    header = capsys.readouterr().out.splitlines()[0].split(",")
    assert header[-5:] == ["top1_class", "top1_probability", "top2_class", "top2_probability", "error"]
    assert main(["predict", run, imgs, "--top-k=3"]) == 2  # 2 classes
    err = capsys.readouterr().err
    assert "top_k=3" in err and "[1, 2]" in err and "Traceback" not in err
    assert main(["predict", str(own_run[0].run_dir), imgs]) == 2  # the command line cannot build your module
    assert "your own module" in capsys.readouterr().err
    npy = tmp_path / "f.npy"
    assert main(["embed", run, imgs, f"--output={npy}"]) == 0
    feats = np.load(npy)
    assert feats.shape[0] == 6 and np.isfinite(feats).all()
    np.testing.assert_allclose(feats, dogcat.embed(result.run_dir, [imgs]), rtol=1e-4, atol=1e-5)
    pq = pytest.importorskip("pyarrow.parquet")
    assert main(["embed", run, imgs, f"--output={tmp_path / 'f.parquet'}"]) == 0
    table = pq.read_table(tmp_path / "f.parquet").to_pydict()
    assert len(table["path"]) == 6 and np.allclose(np.array(table["embedding"]), feats, atol=1e-6)
    capsys.readouterr()
    assert main(["embed", run, imgs, f"--output={tmp_path / 'f.csv'}"]) == 2
    assert ".npy or .parquet" in capsys.readouterr().err and not (tmp_path / "f.csv").exists()


def test_epoch_table_html_and_its_live_update(monkeypatch):
    records = [{"kind": "epoch", "epoch": 1, "step": 4, "train_loss": 0.71234, "lr": 0.001, "epoch_seconds": 61.0,
                "val_loss": 0.5, "val_accuracy": 0.75, "val_count": 4},
               {"kind": "epoch", "epoch": 2, "step": 8, "train_loss": 0.6, "lr": 0.0005, "epoch_seconds": 3.2,
                "val_loss": 0.4, "val_accuracy": 0.8, "val_count": 4}]
    page = epoch_table_html(records)
    assert page.count("<tr>") == 2 and "<th>val_accuracy</th>" in page and "<th>time</th>" in page
    assert "0.7123" in page and "01:01" in page and "val_count" not in page and "kind" not in page
    assert "&lt;b&gt;" in epoch_table_html([{"epoch": 1, "note": "<b>"}])
    shown: list = []

    class Handle:
        def update(self, obj):
            shown.append(("update", obj.data))

    display = pytest.importorskip("IPython.display")
    monkeypatch.setattr(display, "display", lambda obj, display_id: shown.append(("display", obj.data)) or Handle())
    table = EpochTable(show=True)
    for r in records:
        table.add(r)
    assert [k for k, _ in shown] == ["display", "update"] and shown[1][1].count("<tr>") == 2
    EpochTable(show=False).add(records[0])  # outside a notebook: nothing
    assert len(shown) == 2


def test_no_notebook_means_a_text_bar():
    from dogcat.console import progress_bar

    assert progress_bar().__module__ == "tqdm.std"


NOTEBOOK = """
import warnings, torch, dogcat
warnings.simplefilter("always")
import sys; sys.path.insert(0, {tests!r})
from datagen import make_folder, tiny_options
root = make_folder({data!r}, classes=("ant", "bee"), n_per_class=4)
result = dogcat.train(**tiny_options(root, {runs!r}, progress="auto"))
clf = result.load()
clf
"""


@pytest.mark.slow
def test_a_real_notebook_shows_the_live_table_without_tqdm_warning(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    code = NOTEBOOK.format(tests=str(Path(__file__).parent), data=str(tmp_path / "data"), runs=str(tmp_path / "runs"))
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(code)])
    nbclient.NotebookClient(nb, timeout=240, kernel_name="python3").execute()
    outputs = nb.cells[0].outputs
    text = json.dumps(outputs)
    assert "TqdmWarning" not in text and "IProgress" not in text
    html = [o for o in outputs if "text/html" in o.get("data", {})]
    assert html and "dogcat-epochs" in html[0]["data"]["text/html"] and "val_accuracy" in html[0]["data"]["text/html"]
    assert html[0].get("transient", {}).get("display_id") or html[0].get("metadata") is not None
    result = [o for o in outputs if o.get("output_type") == "execute_result"]
    assert result and result[0]["data"]["text/plain"].startswith("Classifier(model=smallcnn")
