"""Issue 22 item 10, calibration: temperature scaling fitted on the validation split (``dogcat calibrate``), stored
in the checkpoint, the run's record and an export's sidecar, applied by val / test / predict; ECE in the metrics
table and a reliability diagram in the report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import dogcat
from dogcat import load_config, train
from dogcat.cli import main
from dogcat.engine.calibrate import calibrate
from dogcat.engine.checkpoint import CheckpointError, load_checkpoint
from dogcat.engine.meters import EvalMeter
from dogcat.export import ExportError, export, sidecar_path
from dogcat.locks import FileLock
from dogcat.metrics import ECE_BINS, ece
from dogcat.models.calibration import T_MAX, T_MIN, fit_temperature, nll, reliability_bins, temperature_problem
from dogcat.tracking.folder import RunFolder


def synthetic(n: int, c: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(true logits), shown ``temperature`` times too sharp: the
    temperature that calibrates them is ``temperature``."""
    g = torch.Generator().manual_seed(seed)
    true = torch.randn(n, c, generator=g, dtype=torch.float64) * 2.0
    labels = torch.multinomial(true.softmax(1), 1, generator=g).squeeze(1)
    return true * temperature, labels


@pytest.mark.parametrize("known", [0.5, 2.5])
def test_fit_recovers_a_known_temperature_and_lowers_the_nll(known):
    logits, labels = synthetic(20_000, 5, known)
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(known, rel=0.05)
    assert nll(logits, labels, t) < nll(logits, labels) - 0.01
    # the fit is a minimum: a little either side is no better
    assert nll(logits, labels, t) <= min(nll(logits, labels, t * 1.05), nll(logits, labels, t / 1.05))


def test_fit_never_raises_the_nll_and_stays_in_range():
    for seed in range(5):
        logits, labels = synthetic(300, 3, 1.0, seed)
        t = fit_temperature(logits, labels)
        assert T_MIN <= t <= T_MAX and nll(logits, labels, t) <= nll(logits, labels) + 1e-12
    # separable with a margin: the NLL falls as T -> 0 (until the gradient vanishes); a T in range, never 0 or NaN
    z = torch.tensor([[9.0, 0.0], [0.0, 9.0]] * 10)
    t = fit_temperature(z, torch.tensor([0, 1] * 10))
    assert T_MIN <= t < 1.0 and nll(z, torch.tensor([0, 1] * 10), t) < 1e-6


def test_ece_by_hand():
    """Four images, 15 bins: confidences 0.95 (right), 0.95 (wrong) share bin 14; 0.55 (right) is alone in bin 8;
    0.4 (wrong; 3 classes) in bin 6. ECE = (|1 - 1.9| + |1 - 0.55| + |0 - 0.4|) / 4 = 0.4375."""
    probs = torch.tensor([[0.95, 0.05, 0.0], [0.05, 0.95, 0.0], [0.55, 0.45, 0.0], [0.4, 0.3, 0.3]])
    labels = torch.tensor([0, 0, 0, 1])
    bins = reliability_bins(probs, labels)
    assert bins.shape == (3, ECE_BINS)
    assert bins[0].tolist() == [0] * 6 + [1, 0, 1] + [0] * 5 + [2]
    assert ece(bins.tolist()) == pytest.approx(0.4375)


def test_ece_matches_torchmetrics_and_the_meter():
    tm = pytest.importorskip("torchmetrics.classification")
    logits, labels = synthetic(2000, 4, 2.0, seed=3)
    probs = logits.softmax(1)
    want = float(tm.MulticlassCalibrationError(num_classes=4, n_bins=ECE_BINS, norm="l1")(probs.float(), labels))
    assert ece(reliability_bins(probs, labels).tolist()) == pytest.approx(want, abs=1e-5)
    meter = EvalMeter(4)
    for chunk in range(0, 2000, 300):  # summed over batches, as a validation pass does
        meter.update(logits[chunk:chunk + 300], labels[chunk:chunk + 300])
    assert meter.compute()["ece"] == pytest.approx(want, abs=1e-5)


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, 1e308, 1e-9, "2", True, None])
def test_temperature_problem_refuses_crafted_values(value):
    assert temperature_problem(value) is not None
    assert temperature_problem(1.0) is None and temperature_problem(T_MIN) is None and temperature_problem(T_MAX) is None


# ------------------------------------------------------------------ a tiny trained run, calibrated once

@pytest.fixture(scope="module")
def calibrated(tmp_path_factory, tiny):
    """A 1-epoch smallcnn at 32 px on a small Kaggle-layout set, calibrated (best.pt); returns
    (root, run folder, Calibration)."""
    from datagen import make_kaggle

    root = tmp_path_factory.mktemp("cal")
    make_kaggle(root, n_per_class=10, n_test=4, bad=False, sizes=(40, 64))
    run = train(load_config(tiny(root, root / "runs", val_split=0.4))).run_dir
    return root, run, calibrate(str(run))


def _images(root: Path) -> list[str]:
    return sorted(str(p) for p in (root / "test").glob("*.jpg"))


def _probs(rows: list[dict]) -> torch.Tensor:
    return torch.tensor([list(r["probs"].values()) for r in rows], dtype=torch.float64)


def test_calibrate_stores_t_in_the_checkpoint_and_the_record(calibrated):
    _, run, cal = calibrated
    assert T_MIN <= cal.temperature <= T_MAX and cal.temperature != 1.0 and cal.previous_temperature == 1.0
    assert cal.images == 8 and cal.nll_after <= cal.nll_before + 1e-12
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)  # still plain data
    assert ckpt["calibration"]["temperature"] == cal.temperature and ckpt["format_version"] == 3
    assert ckpt["calibration"]["ece_bins"] == ECE_BINS
    events = [r for r in RunFolder(run).records() if r.get("event") == "calibrate"]
    assert events[-1]["temperature"] == cal.temperature and events[-1]["checkpoint"] == "best.pt"
    assert events[-1]["nll_before"] == cal.nll_before
    assert "calibration" not in torch.load(run / "checkpoints" / "last.pt", weights_only=True) or \
        (run / "checkpoints" / "last.pt").samefile(run / "checkpoints" / "best.pt") is False


def test_predict_applies_t_from_the_checkpoint_and_from_an_export(calibrated):
    root, run, cal = calibrated
    images = _images(root)
    raw = _probs(dogcat.predict(str(run), images, calibration=False))
    ours = _probs(dogcat.predict(str(run), images))
    want = (raw.log() / cal.temperature).softmax(1)  # softmax(logits / T): log p = logits - const
    assert torch.allclose(ours, want, atol=1e-5) and not torch.allclose(ours, raw, atol=1e-3)
    res = export(str(run), "safetensors")
    assert json.loads(sidecar_path(res.path).read_text())["temperature"] == cal.temperature
    assert torch.allclose(_probs(dogcat.predict(str(res.path), images)), ours, atol=1e-5)
    assert torch.allclose(_probs(dogcat.predict(str(res.path), images, calibration=False)), raw, atol=1e-5)


def test_val_and_test_apply_t_and_the_report_draws_the_reliability_diagram(calibrated):
    root, run, cal = calibrated
    raw = dogcat.evaluate(str(run), calibration=False)
    ours = dogcat.evaluate(str(run), report=True)
    assert ours["temperature"] == cal.temperature and raw["temperature"] == 1.0
    assert ours["loss"] == pytest.approx(cal.nll_after, abs=1e-5) and raw["loss"] == pytest.approx(cal.nll_before, abs=1e-5)
    assert ours["ece"] == pytest.approx(cal.ece_after, abs=1e-6) and raw["ece"] == pytest.approx(cal.ece_before, abs=1e-6)
    page = (run / "report" / "index.html").read_text()
    assert (run / "report" / "reliability.png").stat().st_size > 1000
    assert "Calibration" in page and "ECE raw" in page and f"{cal.ece_before:.4f}" in page
    sub = dogcat.test(str(run), test_data_root=str(root / "test"))
    assert sub["temperature"] == cal.temperature


@pytest.mark.parametrize("value", [0, -2.0, "NaN", 1e308])
def test_a_crafted_sidecar_temperature_is_refused_in_one_line(calibrated, tmp_path, capsys, value):
    root, run, _ = calibrated
    src = run / "export" / "model.safetensors"
    if not src.is_file():
        export(str(run), "safetensors")
    path = tmp_path / "model.safetensors"
    shutil.copy(src, path)
    text = sidecar_path(src).read_text()
    meta = json.loads(text)
    meta["temperature"] = value
    sidecar_path(path).write_text(json.dumps(meta).replace('"NaN"', "NaN"))
    with pytest.raises(ExportError, match="temperature"):
        dogcat.load(str(path))
    capsys.readouterr()
    assert main(["predict", str(path), _images(root)[0]]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "temperature" in err and "Traceback" not in err


def test_a_crafted_checkpoint_temperature_is_refused(calibrated, tmp_path):
    _, run, _ = calibrated
    ckpt = torch.load(run / "checkpoints" / "best.pt", weights_only=True)
    ckpt["calibration"] = {"temperature": -1.0}
    torch.save(ckpt, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="calibration temperature is -1.0"):
        dogcat.load(str(tmp_path / "bad.pt"))


def test_calibrate_refuses_a_run_without_validation_set_a_live_run_and_a_bare_state_dict(calibrated, tiny, tmp_path,
                                                                                         capsys):
    root, run, _ = calibrated
    novalid = train(load_config(tiny(root, tmp_path / "runs", val_split=0.0, max_steps=1))).run_dir
    capsys.readouterr()
    assert main(["calibrate", str(novalid), "-q"]) == 2  # -q: no INFO lines, so the error is all there is
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no validation set" in err
    assert "calibration" not in torch.load(novalid / "checkpoints" / "last.pt", weights_only=True)
    with FileLock(RunFolder(run).lock).acquire():  # as a training holds it
        assert main(["calibrate", str(run), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "in use" in err
    bare = tmp_path / "bare.pt"
    torch.save(torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"], bare)
    assert main(["calibrate", str(bare), "--model=smallcnn", "--image-size=32"]) == 2
    assert "bare state_dict" in capsys.readouterr().err


@pytest.mark.slow
def test_a_calibrated_last_checkpoint_resumes_exactly(fmnist_dir, tmp_path, tiny):
    """Calibrating a cut run's last.pt changes nothing a resume reads: the resumed run ends with the weights and
    the logged metrics of an uninterrupted one, and its next checkpoint carries no temperature."""
    opts = tiny(fmnist_dir, tmp_path, deterministic=True)
    ref = train(load_config({**opts, "env": "ref"})).run_dir
    cut = train(load_config({**opts, "env": "cut", "max_steps": 4})).run_dir
    cal = calibrate(str(cut), checkpoint="last")
    assert load_checkpoint(cut / "checkpoints" / "last.pt")["calibration"]["temperature"] == cal.temperature
    train(load_config({"resume": str(cut), "max_steps": None}, config_file=cut / "config.yaml"))
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt") for r in (ref, cut))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"]) and "calibration" not in b

    def logged(r: Path) -> list[dict]:
        return [{k: v for k, v in x.items() if k not in ("time", "images_per_s", "train_images_per_s",
                                                         "epoch_seconds")}
                for x in RunFolder(r).records() if x.get("kind") != "event"]

    assert logged(ref) == logged(cut)
