"""`hubtools eval TASK`: one module per task (named in its `hubtools.tasks` declaration), each with
`add_arguments(parser)` and `run(args)`; `hubtools.eval.common` holds what they share."""

from __future__ import annotations

import importlib
from types import ModuleType


def eval_module(task: str) -> ModuleType:
    from hubtools.tasks import get_task
    return importlib.import_module(get_task(task).eval_module)
