"""dogcat: a readable PyTorch image-classification toolkit (Kaggle Dogs vs. Cats, any labelled folder).

Library entry points (the CLI only wraps these)::

    cfg = dogcat.load_config({"model": "resnet34", "train_data_root": "data/train"})
    result = dogcat.train(cfg)                      # -> Result(run_dir, best_metric, best_epoch, history)
    dogcat.evaluate(str(result.run_dir))            # validation metrics, result.json
    dogcat.test(str(result.run_dir), {"test_data_root": "data/test"})   # submission.csv
    dogcat.predict(str(result.run_dir), ["some/image.jpg"])
"""

from .config import Config, ConfigError, load_config
from .engine.evaluator import evaluate, load_model, predict, test
from .engine.trainer import Result, train

__all__ = ["Config", "ConfigError", "Result", "evaluate", "load_config", "load_model", "predict", "test", "train"]
__version__ = "0.1.0"
