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
    description: str              # what the policy does (cards)
    dataset_description: str      # the dataset columns the rewards read (cards)
    system_prompt: str
    output_format: str            # what a completion must look like (cards)
    rewards: dict[str, str]       # reward name → what it pays (cards); the functions live in train/rewards
    eval_module: str              # `hubtools eval NAME` runs this module
    tags: tuple[str, ...] = field(default=())
    static_rubrics: dict[str, dict] = field(default_factory=dict)  # title → {description, kind: positive|negative}

    def reward_text(self, name: str) -> str:
        return self.rewards.get(name, name)


FACTUALITY = Task(
    name="factuality",
    description="Answer a factual question with a short final answer in `\\boxed{}`, or abstain with "
                "`\\boxed{Unknown}` when unsure.",
    dataset_description="each row carries the question, its gold `answers` (aliases) and `answerable`, "
                        "selected to be just hard enough for the base model",
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
    eval_module="hubtools.eval.factuality",
    tags=("factuality",),
)

RL_HARD = Task(
    name="rl_hard",
    description="Given an agent's reasoning + search-tool output, produce a concise, citation-grounded refined answer.",
    dataset_description="each row carries per-instance `positive_rubrics` / `negative_rubrics` written by an LLM, "
                        "and the raw `tool_output` whose snippet ids the answer may cite",
    system_prompt=("You refine a research agent's work into the final answer. You get the user's question, the "
                   "agent's reasoning and the raw output of its search tool, whose passages carry ids. Write one "
                   "<answer>...</answer> block that answers the question concisely. Wrap every factual claim in "
                   "<snippet id=ID1,ID2>claim</snippet>, citing only ids that appear in the tool output and whose "
                   "passages state the claim. Do not copy the agent's mistakes, and add nothing the question did "
                   "not ask for."),
    output_format=("A single `<answer>...</answer>` block. Every factual claim is wrapped in "
                   "`<snippet id=ID1,ID2,...>claim</snippet>`, citing only ids that appear in the raw tool output."),
    rewards={
        "rubric": "LLM judge over the row's per-instance `positive_rubrics` / `negative_rubrics` plus the static "
                  "rubric set; each rubric scored 0-2 and normalized to [0, 1]; positive scores enter as-is, "
                  "negative ones are flipped (1 - s) so higher = better; weighted mean",
        "citation": "claim-level precision / recall / F1 of `<snippet id=...>` attributions, each cited claim "
                    "judged against the passages it cites (an id absent from the tool output is unsupported)",
        "format": "1.0 for exactly one `<answer>` block with well-formed snippets, at least one cited claim, and "
                  "every cited id present in the tool output; else 0",
    },
    eval_module="hubtools.eval.rl_hard",
    tags=("refiner", "rubric"),
    static_rubrics={
        "Citation Discipline": {
            "kind": "positive",
            "description": "Every factual claim is wrapped in a snippet whose cited ids appear in the tool output "
                           "and whose passages state that claim."},
        "Off-Query Padding": {
            "kind": "negative",
            "description": "The answer includes material the question did not ask for: background, tangents, "
                           "restated passages or repeated claims."},
        "Wrong-Entity Confabulation": {
            "kind": "negative",
            "description": "The answer attributes facts about a different entity (a namesake, a related paper, "
                           "another place or year) to the one the question asks about."},
    },
)

GEO = Task(
    name="geo",
    description="Rewrite one web source so that a generative engine, answering a query over several sources "
                "with `[k]` citations, cites it more and more prominently, while the source keeps its key points.",
    dataset_description="each row carries the query, its n sources, the index of the source to rewrite and that "
                        "source's visibility in the engine's answer before rewriting",
    # The GEO study's RL system prompt (its wording, grammar mended): a general rewrite instruction, reasoning
    # in think tags, the rewrite about as long as the source.
    system_prompt=("You will be given one 'source text' and one 'task description' about how you should rewrite "
                   "that 'source text'. Please directly return the rewritten content. In addition to including "
                   "your reasoning within the <think> and </think> tags, make sure that your 'rewritten content' "
                   "in the formal answer is approximately the same length as the 'source text'."),
    output_format=("Optional reasoning in `<think>...</think>`, then the rewritten source text alone, about as long "
                   "as the original (only the text after the reasoning is scored)."),
    rewards={
        "geo": "visibility gain of the rewritten source in the simulated engine's answer over all n sources: "
               "(word_position·0.6 + position·0.2 + word·0.2) after − before, each the source's share over the "
               "sources (weights in the recipe); the think section is stripped and `[k]` markers removed before "
               "the engine sees the rewrite; an engine answer citing no source gives it 0, and so does a rewrite "
               "that is empty, outside the recipe's length bounds or addressed to the engine (not shown to it)",
        "keypoint": "(supported − contradicted) / key points of the original source, each labelled against "
                    "the rewrite by the LLM judge; an empty rewrite 0; no value when a label did not parse",
    },
    eval_module="hubtools.eval.geo",
    tags=("geo",),
)

TASKS = {t.name: t for t in (FACTUALITY, RL_HARD, GEO)}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}") from None
