"""dogcat: a readable PyTorch image-classification toolkit (Kaggle Dogs vs. Cats, any labelled folder).

Library entry points (the CLI only wraps these)::

    cfg = dogcat.load_config({"model": "resnet34", "train_data_root": "data/train"})
    result = dogcat.train(cfg)                      # -> Result(run_dir, best_metric, best_epoch, history)
    dogcat.evaluate(str(result.run_dir))            # validation metrics, result.json
    dogcat.test(str(result.run_dir), {"test_data_root": "data/test"})   # submission.csv
    dogcat.predict(str(result.run_dir), ["some/image.jpg"])
    clf = dogcat.load("runs/X")                     # or a checkpoint, or an export (model.onnx + model.onnx.json)
    clf.predict(["a.jpg", "photos/", pil_image], tta=True)   # [{"path"/"index", "class", "probability", "probs"}]
"""

from .config import Config, ConfigError, load_config
from .engine.evaluator import evaluate, load_model, predict, test
from .engine.trainer import Result, train
from .inference import Classifier, load

__all__ = ["Classifier", "Config", "ConfigError", "Result", "evaluate", "load", "load_config", "load_model", "predict",
           "test", "train"]
__version__ = "0.1.0"
