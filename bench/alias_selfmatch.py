"""Do the bundled questions' own aliases still grade CORRECT? Old scoring vs the working tree's.

Each alias is boxed and graded with `grade_answer`, as the builder, rewards and eval grade answers:
  * self: every alias against the question's whole alias list (exact match, must stay 100 %);
  * single gold: every alias against itself alone (must stay 100 %);
  * leave-one-out: for questions with several aliases, each alias against the *other* aliases,
    which exercises the containment rules (how much recall the precision rules cost).

    .venv/bin/python bench/alias_selfmatch.py [--old REV_OR_FILE]

`--old` is a git revision (its hubtools/scoring.py is used; default HEAD, so run it before the
change is committed, or pass the commit before it) or a path to an old scoring.py.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import tempfile
from pathlib import Path

from dataset_builders.factuality import load_recipe, load_sources
from hubtools import scoring as new

ROOT = Path(__file__).resolve().parent.parent


def load_old(rev_or_file: str):
    path = Path(rev_or_file)
    if not path.is_file():
        text = subprocess.run(["git", "show", f"{rev_or_file}:hubtools/scoring.py"], cwd=ROOT, check=True,
                              capture_output=True, text=True).stdout
        path = Path(tempfile.mkdtemp()) / "old_scoring.py"
        path.write_text(text)
    spec = importlib.util.spec_from_file_location("old_scoring", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def cases(recipe: Path):
    """(kind, source, alias, golds) for every graded pair."""
    by_source, _ = load_sources(load_recipe(recipe))
    for source, questions in by_source.items():
        for q in questions:
            for alias in q.answers:
                yield "self", source, alias, q.answers
                yield "single gold", source, alias, [alias]
                if len(q.answers) > 1:
                    yield "leave-one-out", source, alias, [a for a in q.answers if a != alias]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--old", default="HEAD", help="git revision or path of the old scoring.py")
    parser.add_argument("--recipe", default=str(ROOT / "dataset_builders/recipes/factuality.yaml"))
    args = parser.parse_args()
    old = load_old(args.old)
    rows = list(cases(Path(args.recipe)))
    for kind in ("self", "single gold", "leave-one-out"):
        picked = [r for r in rows if r[0] == kind]
        before = [old.grade_answer(f"\\boxed{{{a}}}", g) is old.Grade.CORRECT for _, _, a, g in picked]
        after = [new.grade_answer(f"\\boxed{{{a}}}", g) is new.Grade.CORRECT for _, _, a, g in picked]
        print(f"{kind}: CORRECT {sum(before)}/{len(picked)} before ({args.old}), {sum(after)}/{len(picked)} after")
        for (_, source, alias, golds), b, a in zip(picked, before, after):
            if b != a:
                print(f"  {'lost' if b else 'gained'}: {alias!r} vs {golds} ({source})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
