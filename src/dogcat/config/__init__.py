"""One typed config tree: every option, its default, a one-line doc and its facts (``options.py``), and how
recipes and ``--key=value`` overrides become a checked :class:`Config` (``loading.py``); the options parsed
into typed values (``values.py``).

Layers, later wins: the dataclass defaults -> each YAML recipe in order (``-c A -c B``) -> ``DOGCAT_*``
environment variables (the command line's, ``environ.py``) -> ``--key=value`` overrides.
"""

from .environ import read_environ, where_from
from .loading import (RUN_NAME, as_config, from_dict, help_text, load_config, logger_list, parse_overrides,
                      read_recipe, recipe_list, resolve_key, to_dict, to_yaml)
from .options import (ALIASES, CHANGES, COUNT, LIVE, LOCAL, LOGGERS, NOT_EXPERIMENT, OPTIONS, RESUMABLE, SECTIONS,
                      SEED, Config, ConfigError, DataConfig, DogcatError, EvalConfig, ModelConfig, OptimConfig, Range,
                      TrainConfig, flag, flat_config, is_flag, opt, option_table, spellings)
from .values import ClassWeights, freeze_of, parse_class_weights, parse_freeze

__all__ = [
    "RUN_NAME", "as_config", "from_dict", "help_text", "load_config", "logger_list", "parse_overrides",
    "read_environ", "read_recipe", "recipe_list", "resolve_key", "where_from", "to_dict", "to_yaml", "ALIASES",
    "CHANGES", "COUNT", "LIVE", "LOCAL", "LOGGERS",
    "NOT_EXPERIMENT", "OPTIONS", "RESUMABLE", "SECTIONS", "SEED", "ClassWeights", "Config", "ConfigError",
    "DataConfig", "DogcatError", "EvalConfig", "ModelConfig", "OptimConfig", "Range", "TrainConfig", "flag",
    "flat_config", "freeze_of", "is_flag", "opt", "option_table", "parse_class_weights", "parse_freeze", "spellings",
]
