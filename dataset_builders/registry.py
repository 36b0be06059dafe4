"""The dataset builders `hubtools build-dataset NAME` knows, by module path.

Why module paths: the CLI can list the builders without importing them (and what they import).
Each module provides `add_arguments(parser)`, `run(args)` and `build(recipe, ...)`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

BUILDERS = {"factuality": "dataset_builders.factuality", "rl_hard": "dataset_builders.rl_hard",
            "geo": "dataset_builders.geo"}


def get_builder(name: str) -> ModuleType:
    """The builder module for `name`; an unknown name is an error listing the known ones."""
    if name not in BUILDERS:
        raise ValueError(f"unknown dataset builder {name!r}; known: {', '.join(sorted(BUILDERS))}")
    return importlib.import_module(BUILDERS[name])
