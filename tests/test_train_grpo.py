"""Real TRL GRPO runs of a tiny model through `accelerate launch train/grpo.py`, publishing step revisions;
the step cards' reproduction section; the multi-node Slurm launch, checked against the real parsers."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import ROOT
from test_publish import tree
from hubtools.hubenv import free_port
from hubtools.models import SMOLLM2_REPO
from model_cards import render_model_card

SYSTEM = "Answer in \\boxed{}; \\boxed{Unknown} if not sure."
QUESTIONS = [("Capital of France?", ["Paris"]), ("Who wrote Hamlet?", ["Shakespeare", "William Shakespeare"]),
             ("2+2?", ["4", "four"]), ("Largest planet?", ["Jupiter"])]


@pytest.fixture(scope="module")
def hub_dataset(hub):
    from datasets import Dataset, DatasetDict
    rows = [dict(id=f"t-{i}", source="t", question=q, answers=a, answerable=True, pass_rate=0.5,
                 not_attempted_rate=0.0, variance=0.25,
                 prompt=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": q}])
            for i, (q, a) in enumerate(QUESTIONS)]
    repo = "tests/grpo-questions"
    DatasetDict(train=Dataset.from_list(rows), test=Dataset.from_list(rows[:1])).push_to_hub(repo)
    return repo


def grpo(tmp_path, tiny_model_dir, dataset, repo, *extra: str, launch=("--config_file", "train/accelerate/cpu.yaml"),
         ) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "train/grpo.py", "--config", "train/recipes/factuality.yaml", "--model_name_or_path", str(tiny_model_dir),
           "--dataset_name", dataset, "--output_dir", str(tmp_path / "run"), "--publish_repo", repo,
           "--max_steps", "2", "--save_steps", "1", "--max_completion_length", "12", *extra]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


def load_in_fresh_process(tmp_path, code: str) -> str:
    env = dict(os.environ, HF_HUB_CACHE=str(tmp_path / "fresh-cache"))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_full_run_publishes_each_step_with_its_card(tmp_path, tiny_model_dir, hub_dataset, repo_name):
    out = grpo(tmp_path, tiny_model_dir, hub_dataset, repo_name)
    assert "published step-1" in out.stdout and "published step-2" in out.stdout and "published main" in out.stdout
    api = HfApi()
    refs = {b.name: b.target_commit for b in api.list_repo_refs(repo_name).branches}
    assert {"main", "step-1", "step-2", "latest"} <= set(refs)
    assert tree(api, repo_name, "latest") == tree(api, repo_name, "step-2")
    for step in (1, 2):
        files = api.list_repo_files(repo_name, revision=f"step-{step}")
        assert {"model.safetensors", "README.md", "reward_curve.png", "trainer_state.json"} <= set(files)
        assert "optimizer.pt" not in files
        card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision=f"step-{step}"))
        assert f"checkpoint (step {step})" in card.text and f'revision="step-{step}"' in card.text
        assert "--reward_funcs fact_caution" in card.text and "--save_steps 1" in card.text
        assert card.data.library_name == "transformers" and "grpo" in card.data.tags
        assert card.data.training_step == step and isinstance(card.data.training_reward, float)
        state = json.load(open(hf_hub_download(repo_name, "trainer_state.json", revision=f"step-{step}")))
        assert state["global_step"] == step
    stdout = load_in_fresh_process(tmp_path, (
        "from transformers import AutoModelForCausalLM\n"
        f"m = AutoModelForCausalLM.from_pretrained({repo_name!r}, revision='step-1')\n"
        "print(type(m).__name__, sum(p.numel() for p in m.parameters()))\n"))
    assert stdout.startswith("Qwen3ForCausalLM")

    # Resume from a Hub revision of the same repo: the run continues at step 1 and replaces step-2.
    resumed = grpo(tmp_path / "resume", tiny_model_dir, hub_dataset, repo_name,
                   "--resume_from_checkpoint", f"{repo_name}@step-1")
    assert "published step-2" in resumed.stdout and "published step-1" not in resumed.stdout
    assert api.list_repo_refs(repo_name).branches and \
        {b.name: b.target_commit for b in api.list_repo_refs(repo_name).branches}["step-2"] != refs["step-2"]


def test_lora_run_publishes_adapters_and_merged_weights(tmp_path, tiny_model_dir, hub_dataset, repo_name):
    grpo(tmp_path, tiny_model_dir, hub_dataset, repo_name, "--use_peft", "true", "--lora_r", "4",
         "--lora_alpha", "8", "--publish_merged", "true", "--max_steps", "1")
    assert not list((tmp_path / "run").glob("*-merged"))  # merged by the publisher process, not in on_save
    api = HfApi()
    assert "adapter_model.safetensors" in api.list_repo_files(repo_name, revision="step-1")
    assert "model.safetensors" in api.list_repo_files(repo_name, revision="step-1-merged")
    card = open(hf_hub_download(repo_name, "README.md", revision="step-1")).read()
    assert "PeftModel" in card or "AutoPeftModelForCausalLM" in card
    assert "step-1-merged" in card and "library_name: peft" in card
    merged_card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-1-merged"))
    assert merged_card.data.library_name == "transformers" and merged_card.data.training_step == 1
    stdout = load_in_fresh_process(tmp_path, (
        "from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoModelForCausalLM\n"
        f"a = AutoPeftModelForCausalLM.from_pretrained({repo_name!r}, revision='step-1')\n"
        f"m = AutoModelForCausalLM.from_pretrained({repo_name!r}, revision='step-1-merged')\n"
        "print(type(a).__name__, type(m).__name__)\n"))
    assert stdout.split() == ["PeftModelForCausalLM", "Qwen3ForCausalLM"]


def test_two_cpu_ranks_train_and_rank0_publishes_once(tmp_path, tiny_model_dir, hub_dataset, repo_name):
    out = grpo(tmp_path, tiny_model_dir, hub_dataset, repo_name, "--use_cpu", "true",
               "--per_device_train_batch_size", "2",
               launch=("--config_file", "train/accelerate/cpu_2proc.yaml", "--main_process_port", str(free_port())))
    assert out.stdout.count("published step-1") == 1  # only rank 0 publishes
    card = open(hf_hub_download(repo_name, "README.md", revision="step-2")).read()
    assert "**Parallelism:** 2 process(es)" in card
    titles = [c.title for c in HfApi().list_repo_commits(repo_name, revision="step-2")]
    assert titles.count("Publish step-2") == 1


def parse_grpo(argv: list[str]):
    from trl import GRPOConfig, ModelConfig, TrlParser

    from train.grpo import ScriptArguments
    return TrlParser((ScriptArguments, GRPOConfig, ModelConfig)).parse_args_and_config(argv)


@pytest.mark.parametrize("recipe_in_project", [True, False])
def test_card_reproduction_reruns_elsewhere(tmp_path, monkeypatch, recipe_in_project):
    """A run launched with this machine's paths (a temp recipe, the packaged model's cache folder, a
    local dataset, a temp output dir) gets a card without any of them, whose command parses back to
    the same run."""
    from train.grpo import build_card_info
    monkeypatch.setenv("HUBTOOLS_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "cache" / "smollm2-135m-instruct"  # where the packaged SmolLM2 lives
    model.mkdir(parents=True)
    (tmp_path / "qa").mkdir()
    recipe = ROOT / "train" / "recipes" / "factuality.yaml"
    if not recipe_in_project:
        recipe = Path(shutil.copy(recipe, tmp_path / "my-recipe.yaml"))
    secret = "hf_" + "Zz9" * 10
    argv = ["--config", str(recipe), "--model_name_or_path", str(model), "--dataset_name", str(tmp_path / "qa"),
            "--output_dir", str(tmp_path / "run"), "--max_steps", "3", "--hub_token", secret]
    args = parse_grpo(argv)
    info = build_card_info(*args, ["fact_caution"], 1, argv)
    text = str(render_model_card(info | {"repo_id": "me/run", "step": 1}))

    for local in ("/tmp", str(tmp_path), str(Path.home()), str(model), secret):
        assert local not in text, local
    version, commit = importlib.metadata.version("hubtools"), subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert f"hubtools {version}, commit `{commit or 'unknown'}`" in text
    assert f"GRPO (TRL `GRPOTrainer`, via `train/grpo.py` of `hubtools {version}" in text
    assert ModelCard(text).data.base_model == SMOLLM2_REPO
    assert f"--model_name_or_path {SMOLLM2_REPO}\n" in text and "--output_dir runs/run\n" in text
    assert "--dataset_name path/to/qa" in text and "`--dataset_name` was a local folder (`qa`)" in text
    assert "--max_steps 3\n" in text and "--reward_funcs fact_caution\n" in text  # CLI override and recipe key
    if recipe_in_project:
        assert "--config train/recipes/factuality.yaml" in text
    else:
        assert "--config" not in text and "The recipe `my-recipe.yaml` is not part of hubtools" in text

    # The command, run from the project root on another machine, parses to the same run.
    command = shlex.split(info["repro_command"].replace("\\\n", " "))
    assert command[:3] == ["accelerate", "launch", "train/grpo.py"]
    monkeypatch.chdir(ROOT)
    again = parse_grpo(command[3:])
    moved = {"model_name_or_path", "dataset_name", "output_dir", "logging_dir", "hub_token"}
    for before, after in zip(args, again):
        fields = [f.name for f in dataclasses.fields(before) if f.name not in moved]
        assert [getattr(before, f) for f in fields] == [getattr(after, f) for f in fields]


def test_code_version_of_a_checkout_and_outside_one(tmp_path, monkeypatch):
    import train.common as common
    monkeypatch.setattr(common, "ROOT", tmp_path)
    assert common.code_version() == (importlib.metadata.version("hubtools"), "unknown", False)  # not a checkout

    def git(*args):
        return subprocess.run(["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                              check=True, capture_output=True, text=True).stdout.strip()
    git("init", "-q")
    (tmp_path / "f.py").write_text("a = 1\n")
    git("add", "f.py")
    git("commit", "-q", "-m", "x")
    assert common.code_version()[1:] == (git("rev-parse", "HEAD"), False)
    (tmp_path / "f.py").write_text("a = 2\n")
    assert common.code_version()[1:] == (git("rev-parse", "HEAD"), True)
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    assert common.code_version()[1] == "unknown"


FAKE = {  # stand-ins for the cluster's commands: record argv (NUL-separated) and the HF_* environment
    "scontrol": 'printf "%s\\n" node-1 node-2 node-3',
    "srun": 'echo "$*" >> "$LOG/srun.log"; while [[ $1 == -* ]]; do shift; done; SLURM_PROCID=0 exec "$@"',
    "trl": 'printf "%s\\0" "$@" > "$LOG/trl.args"',
    # like the real trainers, wait for the server to be up
    "accelerate": 'for _ in $(seq 100); do [[ -f $LOG/trl.args ]] && break; sleep 0.1; done\n'
                  'printf "%s\\0" "$@" > "$LOG/accelerate.args"; env | grep ^HF_ > "$LOG/accelerate.env"',
}


def test_slurm_script_launches_real_flags(tmp_path):
    """train/slurm/grpo.slurm with srun/scontrol faked: the last node serves vLLM, the others train, and
    every flag it passes exists in accelerate's, TRL vllm-serve's and train/grpo.py's real parsers."""
    from accelerate.commands.launch import launch_command_parser
    from trl.scripts.vllm_serve import make_parser

    script = ROOT / "train" / "slurm" / "grpo.slurm"
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in FAKE.items():
        (bin_dir / name).write_text(f"#!/bin/bash\n{body}\n")
        (bin_dir / name).chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{Path(sys.executable).parent}:/usr/bin:/bin", LOG=str(tmp_path),
               SLURM_JOB_NODELIST="node-[1-3]", GPUS_PER_NODE="4", VLLM_TP="2",
               HF_ENDPOINT="http://hub.internal:7860")
    env.pop("HF_HUB_DISABLE_XET", None)
    out = subprocess.run(["bash", str(script), "train/recipes/factuality.yaml", "--model_name_or_path",
                          "Qwen/Qwen3-0.6B", "--max_steps", "7"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr

    srun = (tmp_path / "srun.log").read_text()
    assert "--nodelist=node-3 trl vllm-serve" in srun and "--nodelist=node-1,node-2 " in srun
    serve = (tmp_path / "trl.args").read_text().split("\0")[:-1]
    assert serve[0] == "vllm-serve"
    (vllm,) = make_parser().parse_args_and_config(serve[1:])
    assert (vllm.model, vllm.tensor_parallel_size, vllm.port) == ("Qwen/Qwen3-0.6B", 2, 8000)

    launch = (tmp_path / "accelerate.args").read_text().split("\0")[:-1]
    assert launch[0] == "launch"
    acc = launch_command_parser().parse_args(launch[1:])
    assert (acc.config_file, acc.num_machines, acc.num_processes, acc.main_process_ip, acc.machine_rank) == \
        ("train/accelerate/zero3.yaml", 2, 8, "node-1", 0)
    assert acc.training_script == "train/grpo.py"
    script_args, training_args, model_args = parse_grpo(acc.training_script_args)
    assert (training_args.use_vllm, training_args.vllm_mode, training_args.vllm_server_host,
            training_args.vllm_server_port) == (True, "server", "node-3", 8000)
    assert model_args.model_name_or_path == "Qwen/Qwen3-0.6B" and training_args.max_steps == 7
    assert script_args.reward_funcs == ["fact_caution"]  # the recipe's keys still apply
    hf_env = (tmp_path / "accelerate.env").read_text().split()
    assert "HF_ENDPOINT=http://hub.internal:7860" in hf_env and "HF_HUB_DISABLE_XET=1" in hf_env


def test_refiner_recipe_step_card_carries_the_published_cards_facts():
    """The rubric refiner recipe's step card, built from the run's own config (no hand-written run
    info), states every fact of the published step-50 card it reproduces."""
    from train.grpo import build_card_info
    argv = ["--config", str(ROOT / "train" / "recipes" / "rl_hard_refiner.yaml"),
            "--use_cpu", "true", "--bf16", "false"]  # parsing only: no GPU here
    args = parse_grpo(argv)
    info = build_card_info(*args, ["rubric", "citation"], 8, argv)
    text = str(render_model_card(info | {"repo_id": "hubtools/refiner", "step": 50, "revision": "step-50"}))
    facts = [
        "base_model: lihaoxin2020/qwen3-4b-refiner-gpt54-ep2", "(SFT on GPT-5.4 rubric-grounded refiner data)",
        "GRPO (TRL `GRPOTrainer`", "**Training step:** 50",
        "Given an agent's reasoning + search-tool output, produce a concise, citation-grounded refined answer.",
        "`lihaoxin2020/rl_hard_gpt5_sft_gpt54rubric` (train split)", "per-instance `positive_rubrics` / `negative_rubrics`",
        "negative ones are flipped (1 - s)", "`Citation Discipline`, `Off-Query Padding`, `Wrong-Entity Confabulation`",
        "**Judge:** `Qwen/Qwen3.5-35B-A3B` served via local vLLM", "**citation** (weight 0.2)",
        "`beta = 0.001`", "k3", "adamw_torch", "5e-06", "constant", "per_device_train_batch_size = 1",
        "8 process(es)", "32 unique prompts × 8 samples per prompt", "`temperature = 1.0`",
        "`max_prompt_length = 6144`", "`max_completion_length = 1024`", "**Seed:** 42",
        "single `<answer>...</answer>` block", "<snippet id=ID1,ID2,...>claim</snippet>",
        "baselines for ablations on rubric design, citation weighting, or judge choice",
        "--config train/recipes/rl_hard_refiner.yaml", "--reward_weights 1.0 0.2\n", "--beta 0.001\n",
        "--learning_rate 5e-06\n", "--max_completion_length 1024\n", "--seed 42\n",
    ]
    missing = [f for f in facts if f not in text]
    assert not missing, missing


def test_judge_rewards_run_publishing_step_cards(tmp_path, tiny_model_dir, hub, repo_name):
    """A 2-step GRPO run with the rubric, citation and format rewards, judged by a real `transformers
    serve` (the tiny random model: its replies do not parse, so rubric/citation are None and the
    format reward carries the step); each step card names the judge and the reward composition."""
    from datasets import Dataset, DatasetDict

    from hubtools.generation import serve_transformers
    from hubtools.tasks import RL_HARD
    tools = "<snippet id=S1>Paris is the capital of France.</snippet>"
    rows = [{"prompt": [{"role": "system", "content": RL_HARD.system_prompt},
                        {"role": "user", "content": f"Question: capital of France?\n\nTool output:\n{tools}"}],
             "tool_output": tools, "positive_rubrics": [{"title": "Names Paris", "description": "Paris."}],
             "negative_rubrics": [{"title": "Names Lyon", "description": "Lyon."}]} for _ in range(4)]
    data = tmp_path / "rubric-data"
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(str(data))
    with serve_transformers(tiny_model_dir) as url:
        grpo(tmp_path, tiny_model_dir, str(data), repo_name, "--task", "rl_hard",
             "--reward_funcs", "rubric", "citation", "format", "--reward_weights", "1.0", "0.2", "1.0",
             "--judge_model", str(tiny_model_dir), "--judge_base_url", url, "--judge_serving", "transformers serve")
    card = ModelCard.load(hf_hub_download(repo_name, "README.md", revision="step-2"))
    assert "**Judge:** `" in card.text and "served via transformers serve" in card.text
    assert "**citation** (weight 0.2)" in card.text and "negative ones are flipped (1 - s)" in card.text
    assert "single `<answer>...</answer>` block" in card.text
    history = json.loads(open(hf_hub_download(repo_name, "trainer_state.json", revision="step-2")).read())
    assert any("rewards/format/mean" in h for h in history["log_history"])
    # what each reward cost, per step, next to the step's time
    timed = [h for h in history["log_history"] if "reward_seconds/rubric" in h]
    assert timed and all(h["reward_seconds/rubric"] > 0 and "step_time" in h for h in timed)


def test_no_row_left_stops_before_training(tmp_path, tiny_model_dir):
    """Every prompt over max_prompt_length: an error naming the dataset and why, before any model loads."""
    from datasets import Dataset, DatasetDict

    from train.grpo import main
    rows = [{"prompt": [{"role": "user", "content": "What is the capital of France? " * 20}], "answers": ["Paris"],
             "answerable": True}] * 3
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(str(tmp_path / "data"))
    with pytest.raises(ValueError, match=r"no training rows left in .*data \(train\): 3 with prompts over "
                                         r"max_prompt_length=16"):
        main(["--config", "train/recipes/factuality.yaml", "--model_name_or_path", str(tiny_model_dir),
              "--dataset_name", str(tmp_path / "data"), "--max_prompt_length", "16", "--use_cpu", "true",
              "--bf16", "false", "--output_dir", str(tmp_path / "run")])
