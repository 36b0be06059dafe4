"""Real TRL GRPO runs of a tiny model through `accelerate launch train/grpo.py`, publishing step revisions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import ROOT
from test_publish import tree
from hubtools.hubenv import free_port

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
