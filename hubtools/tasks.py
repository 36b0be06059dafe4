"""Each task's facts, declared once: its system prompt, output format, reward texts and eval.

Why one place: the dataset builder writes the prompt into every row, the trainer's cards describe
the output format and each reward, and eval scores the same format; if each kept its own copy they
would drift. Adding a task = one declaration here, plus its builder, rewards and eval modules.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Task:
    name: str
    system_prompt: str
    output_format: str            # what a completion must look like (cards)
    rewards: dict[str, str]       # reward name → what it pays (cards); the functions live in train/rewards
    eval_module: str              # `hubtools eval NAME` runs this module
    tags: tuple[str, ...] = field(default=())

    def reward_text(self, name: str) -> str:
        return self.rewards.get(name, name)


FACTUALITY = Task(
    name="factuality",
    # The study's system prompt: it asks for exactly the output format `hubtools.scoring.grade_answer` reads.
    system_prompt=("A conversation between User and Assistant. The Assistant must think step by step. "
                   "Then give a brief answer in \\boxed{} if sure about the answer, otherwise the "
                   "Assistant can return \\boxed{Unknown} if not sure."),
    output_format=("Step-by-step reasoning, then the final answer in `\\boxed{...}`, or `\\boxed{Unknown}` "
                   "when the model is not sure (an abstention, rewarded when no sample of the group is right)."),
    rewards={
        "fact_caution": "group-aware fact+caution: if any of the group's samples is correct, correct = 1.0, "
                        "process-correct (final answer a wrong attempt, reasoning committed to the gold) = 0.5, "
                        "others 0; if none is correct, not-attempted (`\\boxed{Unknown}`) = 1.0, others 0",
        "fact": "correct = 1.0, process-correct = 0.5, others 0",
        "caution": "in groups with no correct sample, not-attempted = 1.0, others 0",
        "boxed_format": "1.0 when the completion gives a final answer in `\\boxed{}` (an abstention counts), else 0",
    },
    eval_module="hubtools.eval_factuality",
    tags=("factuality",),
)

TASKS = {t.name: t for t in (FACTUALITY,)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
