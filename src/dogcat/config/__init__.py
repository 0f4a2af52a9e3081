"""One typed config tree: every option, its default and a one-line doc (``options.py``), and how recipes and
``--key=value`` overrides become a checked :class:`Config` (``loading.py``).

Layers, later wins: the dataclass defaults -> a YAML recipe (``--config=FILE``) -> ``--key=value`` overrides.
"""

from .loading import (RUN_NAME, as_config, from_dict, help_text, load_config, logger_list, parse_overrides,
                      read_recipe, resolve_key, to_dict, to_yaml)
from .options import (COUNT, LOGGERS, NOT_EXPERIMENT, OPTIONS, SECTIONS, SEED, Config, ConfigError, DataConfig,
                      DogcatError, EvalConfig, ModelConfig, OptimConfig, Range, TrainConfig, flat_config, is_flag,
                      opt, option_table)

__all__ = [
    "RUN_NAME", "as_config", "from_dict", "help_text", "load_config", "logger_list", "parse_overrides",
    "read_recipe", "resolve_key", "to_dict", "to_yaml", "COUNT", "LOGGERS", "NOT_EXPERIMENT", "OPTIONS",
    "SECTIONS", "SEED", "Config", "ConfigError", "DataConfig", "DogcatError", "EvalConfig", "ModelConfig",
    "OptimConfig", "Range", "TrainConfig", "flat_config", "is_flag", "opt", "option_table",
]
