"""One typed config tree: every option, its default, a one-line doc and its facts (``options.py``), and how
recipes and ``--key=value`` overrides become a checked :class:`Config` (``loading.py``).

Layers, later wins: the dataclass defaults -> a YAML recipe (``--config=FILE``) -> ``--key=value`` overrides.
"""

from .loading import (RUN_NAME, as_config, from_dict, help_text, load_config, logger_list, parse_overrides,
                      read_recipe, resolve_key, to_dict, to_yaml)
from .options import (ALIASES, CHANGES, COUNT, LIVE, LOCAL, LOGGERS, NOT_EXPERIMENT, OPTIONS, RESUMABLE, SECTIONS, SEED,
                      ClassWeights, Config, ConfigError, DataConfig, DogcatError, EvalConfig, ModelConfig, OptimConfig,
                      Range, TrainConfig, flag, flat_config, is_flag, opt, option_table, parse_class_weights, spellings)

__all__ = [
    "RUN_NAME", "as_config", "from_dict", "help_text", "load_config", "logger_list", "parse_overrides",
    "read_recipe", "resolve_key", "to_dict", "to_yaml", "ALIASES", "CHANGES", "COUNT", "LIVE", "LOCAL", "LOGGERS",
    "NOT_EXPERIMENT", "OPTIONS", "RESUMABLE", "SECTIONS", "SEED", "ClassWeights", "Config", "ConfigError",
    "DataConfig", "DogcatError", "EvalConfig", "ModelConfig", "OptimConfig", "Range", "TrainConfig", "flag",
    "flat_config", "is_flag", "opt", "option_table", "parse_class_weights", "spellings",
]
