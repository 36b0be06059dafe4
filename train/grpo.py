"""GRPO training with task rewards; every saved checkpoint is published as Hub revision `step-N`.

    accelerate launch train/grpo.py --config train/recipes/factuality.yaml [--flag value ...]

The recipe is parsed like open-r1's, by TRL's parser: script arguments (below) + `GRPOConfig` +
`ModelConfig` (full or LoRA via `use_peft`). Any recipe key can be overridden on the command line.
`--resume_from_checkpoint` takes a local folder or a Hub revision as `REPO@REVISION`; `--model_revision`
picks the base model's revision (e.g. `step-2` of an SFT run of train/sft.py). What every training
script shares (setup, card facts, publishing) is in train/common.py.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python train/grpo.py` from a checkout

from train import common  # noqa: E402  (its package turns Xet off for a local hub before HF imports)


@dataclass
class ScriptArguments(common.TrainScriptArguments):
    reward_funcs: list[str] = field(default_factory=list, metadata={
        "help": "rewards, summed with reward_weights (names in train/rewards: fact_caution, fact, caution, "
                "boxed_format, rubric, citation, format, geo, keypoint)"})
    reward_schedule: str | None = field(default=None, metadata={
        "help": "rewards in sequence instead, e.g. 'fact:100,caution' = fact until step 100, then caution"})
    max_prompt_length: int | None = field(default=None, metadata={
        "help": "drop training rows whose prompt is longer than this many tokens (counted in the log and cards)"})
    # The LLM judge of the judge-backed rewards (rubric, citation, keypoint), and the GEO reward's generative
    # engine: any OpenAI-compatible server(s).
    judge_model: str | None = field(default=None, metadata={
        "help": "model name the judge server(s) serve (also the simulated engine of the geo reward)"})
    judge_base_url: list[str] = field(default_factory=list, metadata={
        "help": "OpenAI-compatible judge endpoint(s), e.g. http://node1:8000/v1; several share the load"})
    judge_serving: str = field(default="an OpenAI-compatible endpoint", metadata={
        "help": "how the judge is served, for the cards (e.g. 'local vLLM'); never a URL"})
    judge_concurrency: int = field(default=16, metadata={"help": "judge requests in flight per server"})
    judge_cache_dir: str | None = field(default=None, metadata={"help": "on-disk cache of judge replies"})
    judge_max_tokens: int = field(default=512, metadata={
        "help": "tokens per judge reply (leave room for reasoning with a thinking judge)"})
    judge_processes: int = field(default=1, metadata={
        "help": "judge client processes: more when one process's HTTP client limits the calls/s (bench/judge.py)"})
    static_rubrics: list[str] = field(default_factory=lambda: ["Citation Discipline", "Off-Query Padding",
                                                               "Wrong-Entity Confabulation"],
                                      metadata={"help": "titles of the static rubric set added to every row's rubrics"})
    instance_rubrics_only: bool = field(default=False, metadata={
        "help": "rubric reward: score only the row's own rubrics (drop the static set from reward and logs)"})
    geo_weights: str = field(default="word_position:0.6,position:0.2,word:0.2", metadata={
        "help": "geo reward: weight of each visibility metric of the rewritten source, metric:weight comma-separated"})
    geo_length_ratio: list[float] = field(default_factory=lambda: [0.5, 2.0], metadata={
        "help": "geo reward: lo hi; a rewrite whose word count is outside lo..hi times the original's earns "
                "what an uncited one does"})


def build_card_info(script_args, training_args, model_args, reward_names: list[str], world_size: int,
                    argv: list[str], dropped_long_prompts: int = 0) -> dict:
    """Run facts for the step cards (see examples/grpo_step_card.yaml for the keys): the common ones
    (train/common.py) plus the rewards, judge, KL and rollouts."""
    from hubtools.models import model_label
    from hubtools.tasks import get_task
    from train import rewards
    task = get_task(script_args.task)
    weights = training_args.reward_weights or [1.0] * len(reward_names)
    context = {"max_prompt_length": script_args.max_prompt_length,
               "max_completion_length": training_args.max_completion_length,
               "vllm_max_model_length": training_args.vllm_max_model_length if training_args.use_vllm else None}
    notes = []
    if training_args.beta == 0:
        notes.append("No KL penalty (beta = 0), so no reference model was loaded.")
    if dropped_long_prompts:
        notes.append(f"{dropped_long_prompts} training row(s) with prompts over {script_args.max_prompt_length} "
                     "tokens were left out.")
    if "rubric" in reward_names:
        notes.append("Rubric reward: the row's per-instance rubrics only (static set dropped)."
                     if script_args.instance_rubrics_only else
                     f"Rubric reward: the row's per-instance rubrics plus the static set "
                     f"({', '.join(f'`{t}`' for t in script_args.static_rubrics)}).")
    if "geo" in reward_names:
        notes.append(f"GEO reward: the judge model is the simulated generative engine; weights "
                     f"`{script_args.geo_weights}`; a rewrite outside {script_args.geo_length_ratio[0]:g}–"
                     f"{script_args.geo_length_ratio[1]:g}× the original's words is scored as uncited.")
    info = common.card_info(script_args, training_args, model_args, world_size, argv, algorithm="GRPO",
                            trainer="TRL `GRPOTrainer`", script="train/grpo.py", notes=notes)
    return info | {
        "reward_description": "; ".join(f"`{n}`: {task.reward_text(n.split('_then_')[0])}" for n in reward_names)
        if not script_args.reward_schedule else
        f"rewards in sequence (`{script_args.reward_schedule}`): " +
        "; ".join(f"`{s['reward']}`: {task.reward_text(s['reward'])}"
                  for s in rewards.parse_schedule(script_args.reward_schedule)),
        "reward_components": [{"name": n, "weight": w} for n, w in zip(reward_names, weights)],
        **({"judge": model_label(script_args.judge_model), "judge_serving": script_args.judge_serving}
           if {"rubric", "citation", "geo", "keypoint"} & set(reward_names) else {}),
        **({"kl_estimator": "k3", "kl_beta": training_args.beta} if training_args.beta > 0 else {}),
        "rollout_prompts": training_args.generation_batch_size // training_args.num_generations,
        "rollout_samples_per_prompt": training_args.num_generations,
        "temperature": training_args.temperature, "context": {k: v for k, v in context.items() if v is not None},
    }


def main(argv: list[str] | None = None) -> dict:
    """Train; returns the trainer's train metrics (train_runtime, …)."""
    from trl import GRPOConfig, GRPOTrainer, ModelConfig, TrlParser

    from train.rewards import get_reward_funcs

    argv = sys.argv[1:] if argv is None else argv
    parser = TrlParser((ScriptArguments, GRPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(argv)
    reward_funcs = get_reward_funcs(script_args)  # a bad reward or judge setting fails before any download
    reward_names = [f.__name__ for f in reward_funcs]
    model_path = common.setup(script_args, training_args, model_args)

    dataset = common.load_train_dataset(script_args)
    dataset, dropped = common.drop_long_rows(dataset, model_args.model_name_or_path, model_args.model_revision,
                                             script_args.max_prompt_length, flag="max_prompt_length")
    common.require_rows(dataset, script_args, f"{dropped} with prompts over max_prompt_length="
                                              f"{script_args.max_prompt_length}")
    trainer = GRPOTrainer(model=model_path, reward_funcs=reward_funcs, args=training_args,
                          train_dataset=dataset, peft_config=common.peft_config(model_args))
    common.name_the_base(trainer, model_args, model_path)
    return common.train_and_publish(
        trainer, script_args, training_args, model_args, metric="reward",
        card_info=lambda world: build_card_info(script_args, trainer.args, model_args, reward_names, world, argv,
                                                dropped))


if __name__ == "__main__":
    main()
