"""Command-line entry points behind tools/*.py, in one module per concept: :mod:`.args` (the tools' arguments),
:mod:`.reporting` (the one place errors are reported; the console made line-buffered, :mod:`~isgan_torchreid.console`),
:mod:`.run` (a run assembled from its config) and :mod:`.mains` (the entry points). The names other modules and
tools use are imported here."""
from .args import is_config_key, is_name, is_value, parse_args, parser, pop_list_flag
from .mains import export_main, extract_main, test_main, train_main
from .reporting import reports_errors
from .run import (build_engine, checkpoints_in, configure_cpu, configure_device, evaluate_weights,
                  prepare_output_dir, results_table, setup, training_hooks)

__all__ = ["build_engine", "checkpoints_in", "configure_cpu", "configure_device", "evaluate_weights",
           "export_main", "extract_main", "is_config_key", "is_name", "is_value", "parse_args", "parser",
           "pop_list_flag", "prepare_output_dir", "reports_errors", "results_table", "setup", "test_main",
           "train_main", "training_hooks"]
