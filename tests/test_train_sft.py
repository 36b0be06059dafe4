"""Real TRL SFT runs of a tiny model through `accelerate launch train/sft.py`, publishing step revisions with
step cards; the loss on the completion only; bad data named; GRPO starting from a published SFT revision;
the refiner SFT recipe's card."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from huggingface_hub import HfApi, ModelCard, hf_hub_download

from conftest import HUB_TOKEN, ROOT
from test_train_grpo import load_in_fresh_process
from model_cards import render_model_card

SYSTEM = "Refine into one <answer>; cite snippets."
ANSWER = "<answer><snippet id=S1>Paris is the capital of France.</snippet></answer>"
QUESTIONS = ["Capital of France?", "Who wrote Hamlet?", "Largest planet?", "Highest mountain?"]


def row(question: str, answer: str | None) -> dict:
    tools = "<snippet id=S1>Paris is the capital of France.</snippet>"
    return {"prompt": [{"role": "system", "content": SYSTEM},
                       {"role": "user", "content": f"Question: {question}\n\nTool output:\n{tools}"}],
            "reference_answer": answer, "tool_output": tools}


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory):
    """rl_hard-shaped rows: 4 with a reference answer, one without (null, as the builder writes), one
    whose prompt is over the run's max_length."""
    from datasets import Dataset, DatasetDict
    rows = [row(q, ANSWER.replace("Paris", q.split()[0])) for q in QUESTIONS]
    rows += [row("Unanswered?", None), row("Long? " + "xqzvk wjyb " * 150, ANSWER)]
    path = tmp_path_factory.mktemp("sft") / "rl-hard"
    DatasetDict(train=Dataset.from_list(rows)).save_to_disk(str(path))
    return path


SFT_ARGS = ["--max_steps", "2", "--save_steps", "1", "--max_length", "512", "--per_device_train_batch_size", "2",
            "--gradient_accumulation_steps", "1", "--learning_rate", "1e-3"]


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "train/accelerate/cpu.yaml",
           script, *args]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-5000:]
    return out


@pytest.fixture(scope="module")
def sft_run(hub, tiny_model_dir, sft_data, tmp_path_factory):
    """A 2-step SFT of the tiny model with the refiner SFT recipe, publishing step-1, step-2 and main."""
    repo = f"tests/sft-{time.time_ns() % 10**9}"
    start = time.perf_counter()
    out = launch("train/sft.py", "--config", "train/recipes/rl_hard_sft.yaml", "--model_name_or_path",
                 str(tiny_model_dir), "--dataset_name", str(sft_data), "--output_dir",
                 str(tmp_path_factory.mktemp("sft-run") / "run"), "--publish_repo", repo, *SFT_ARGS,
                 "--hub_token", HUB_TOKEN)
    print(f"2-step SFT run (accelerate launch, publishing): {time.perf_counter() - start:.1f} s")
    return repo, out


def test_sft_publishes_each_step_with_its_card(sft_run, tmp_path):
    repo, out = sft_run
    assert "published step-1" in out.stdout and "published step-2" in out.stdout and "published main" in out.stdout
    api = HfApi()
    assert {"main", "step-1", "step-2", "latest"} <= {b.name for b in api.list_repo_refs(repo).branches}
    for step in (1, 2):
        files = set(api.list_repo_files(repo, revision=f"step-{step}"))
        assert {"model.safetensors", "tokenizer.json", "README.md", "loss_curve.png", "trainer_state.json"} <= files
        assert "reward_curve.png" not in files and "optimizer.pt" not in files
        text = open(hf_hub_download(repo, "README.md", revision=f"step-{step}")).read()
        card = ModelCard(text)
        state = json.load(open(hf_hub_download(repo, "trainer_state.json", revision=f"step-{step}")))
        losses = [h["loss"] for h in state["log_history"] if "loss" in h]
        assert card.data.training_step == step and card.data.training_loss == pytest.approx(losses[-1])
        assert "training_reward" not in card.data.to_dict() and "sft" in card.data.tags
        assert card.data.library_name == "transformers"
        for fact in [f"SFT checkpoint (step {step})", "**Algorithm:** SFT (TRL `SFTTrainer`, via `train/sft.py`",
                     f"Training loss at step {step}: mean loss ", "![Loss curve](loss_curve.png)",
                     "the target, trained as the assistant's reply, from the `reference_answer` column; "
                     "loss on the target tokens only", "`max_steps = 2` over 4 rows, effective batch 2",
                     "`max_length = 512`", "`lr = 0.001` cosine", "**Seed:** 42.",
                     "1 training row(s) without a target in `reference_answer` were left out.",
                     "1 training row(s) with prompt + completion over 512 tokens were left out.",
                     "single `<answer>...</answer>` block", "accelerate launch train/sft.py \\\n"
                     "    --config train/recipes/rl_hard_sft.yaml", "--completion_column reference_answer\n",
                     "--max_steps 2\n", "--hub_token '<REDACTED>'", f'revision="step-{step}"']:
            assert fact in text, fact
        for absent in ["**Reward:**", "**Rollouts:**", "**KL:**", "Reward curve", "None", "GRPOTrainer",
                       HUB_TOKEN, "/tmp/"]:
            assert absent not in text, absent
    # the steps trained: their weights differ, and a fresh process loads one by revision
    stdout = load_in_fresh_process(tmp_path, (
        "import torch\nfrom transformers import AutoModelForCausalLM\n"
        f"a, b = (AutoModelForCausalLM.from_pretrained({repo!r}, revision=r) for r in ('step-1', 'step-2'))\n"
        "print(type(b).__name__, max((x - y).abs().max().item() for x, y in zip(a.parameters(), b.parameters())))\n"))
    name, diff = stdout.split()
    assert name == "Qwen3ForCausalLM" and float(diff) > 0


def parse_sft(argv: list[str]):
    from trl import ModelConfig, SFTConfig, TrlParser

    from train.sft import ScriptArguments
    return TrlParser((ScriptArguments, SFTConfig, ModelConfig)).parse_args_and_config(argv)


def test_loss_is_on_the_completion_only(tiny_model_dir, sft_data, tmp_path):
    """One collated batch of the real trainer: every prompt token is masked out of the labels, and the
    labelled tokens are exactly the reference answer and the end-of-turn token."""
    from transformers import AutoTokenizer

    from train import common, sft
    args = parse_sft(["--config", "train/recipes/rl_hard_sft.yaml", "--model_name_or_path", str(tiny_model_dir),
                      "--dataset_name", str(sft_data), "--output_dir", str(tmp_path / "run"), *SFT_ARGS])
    trainer, data = sft.build_trainer(*args, common.setup(*args))
    assert data == {"rows": 4, "no_target": 1, "too_long": 1}
    batch = next(iter(trainer.get_train_dataloader()))
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    answers = {ANSWER.replace("Paris", q.split()[0]) for q in QUESTIONS}
    for input_ids, labels, attention in zip(batch["input_ids"], batch["labels"], batch["attention_mask"]):
        trained = labels != -100
        assert trained.any() and (labels[trained] == input_ids[trained]).all()
        text = tokenizer.decode(input_ids[trained])
        assert text.removesuffix("<|im_end|>\n") in answers, text  # the answer, nothing of the prompt
        prompt_tokens = int(attention.sum()) - int(trained.sum())
        assert prompt_tokens > 20 and not trained[:prompt_tokens].any()


def test_bad_data_is_named(tiny_model_dir, sft_data, tmp_path):
    from datasets import Dataset

    from train import sft
    argv = ["--config", "train/recipes/rl_hard_sft.yaml", "--model_name_or_path", str(tiny_model_dir),
            "--dataset_name", str(sft_data), "--output_dir", str(tmp_path / "run"), *SFT_ARGS]
    with pytest.raises(ValueError, match=r"no column 'answer' \(columns: \['prompt', 'reference_answer', "
                                         r"'tool_output'\]\)"):
        sft.main(argv + ["--completion_column", "answer"])
    with pytest.raises(ValueError, match=r"row 0: `prompt` must be a list of chat messages"):
        sft.prompt_completion(Dataset.from_list([{"prompt": "plain text", "reference_answer": "x"}]),
                              "reference_answer")
    no_content = {"prompt": [{"role": "user", "content": None}], "reference_answer": "x", "tool_output": ""}
    with pytest.raises(ValueError, match=r"row 1: `prompt` must be a list of chat messages"):
        sft.prompt_completion(Dataset.from_list([row("a?", "x"), no_content]), "reference_answer")
    with pytest.raises(ValueError, match=r"row 0: `target` \(completion_column\) must be text or a list of chat"):
        sft.prompt_completion(Dataset.from_list([row("a?", "x") | {"target": 3}]), "target")
    messages = Dataset.from_list([row("a?", "x") | {"target": [{"role": "assistant", "content": "y"}]}])
    converted, dropped = sft.prompt_completion(messages, "target")
    assert converted[0]["completion"] == [{"role": "assistant", "content": "y"}] and dropped == 0
    assert converted.column_names == ["prompt", "completion"]


def test_grpo_starts_from_a_published_sft_revision(sft_run, tiny_model_dir, sft_data, tmp_path, repo_name):
    """GRPO with `--model_revision step-2` loads the SFT run's step-2, not whatever `main` holds now, and
    its step card names the base model's repo and revision."""
    from safetensors.torch import load_file
    sft_repo, _ = sft_run
    api = HfApi()
    api.upload_folder(repo_id=sft_repo, folder_path=str(tiny_model_dir), revision="main",
                      commit_message="main moves on: the untrained model")
    launch("train/grpo.py", "--config", "train/recipes/factuality.yaml", "--model_name_or_path", sft_repo,
           "--model_revision", "step-2", "--dataset_name", str(sft_data), "--task", "rl_hard",
           "--reward_funcs", "format", "--beta", "0.01", "--output_dir", str(tmp_path / "grpo"),
           "--publish_repo", repo_name, "--max_steps", "1", "--save_steps", "1", "--max_completion_length", "12")

    text = open(hf_hub_download(repo_name, "README.md", revision="step-1")).read()
    card = ModelCard(text)
    assert card.data.base_model == sft_repo and "grpo" in card.data.tags
    assert f"- **Base model:** [`{sft_repo}`](https://huggingface.co/{sft_repo}/tree/step-2) at revision `step-2`" \
        in text
    assert f"--model_name_or_path {sft_repo}\n" in text and "--model_revision step-2\n" in text
    weights = {name: load_file(hf_hub_download(repo, "model.safetensors", revision=rev))
               for name, repo, rev in [("grpo", repo_name, "step-1"), ("sft", sft_repo, "step-2"),
                                       ("main", sft_repo, "main")]}

    def distance(a: str, b: str) -> float:
        return max((weights[a][k] - weights[b][k]).abs().max().item() for k in weights[a])
    assert distance("grpo", "sft") * 10 < distance("grpo", "main")  # one GRPO step at lr 1e-6 from step-2


def test_grpo_starts_from_a_merged_revision_of_a_lora_run(hub, tiny_model_dir, sft_data, tmp_path, repo_name):
    """A LoRA run's `main` holds adapters and no config; GRPO (LoRA again) from its `step-N-merged` loads
    that revision's config and weights (TRL alone reads the config from `main` and fails), and its
    adapters name the Hub repo and revision as their base, not the folder it was downloaded to."""
    api = HfApi()
    base = f"{repo_name}-lora"
    api.create_repo(base)
    (tmp_path / "adapters").mkdir()
    (tmp_path / "adapters" / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    api.upload_folder(repo_id=base, folder_path=str(tmp_path / "adapters"), commit_message="adapters only")
    api.create_branch(base, branch="step-2-merged")  # as the publisher writes it: merged weights only
    api.upload_folder(repo_id=base, folder_path=str(tiny_model_dir), revision="step-2-merged",
                      delete_patterns=["adapter_config.json"])
    launch("train/grpo.py", "--config", "train/recipes/factuality.yaml", "--model_name_or_path", base,
           "--model_revision", "step-2-merged", "--dataset_name", str(sft_data), "--task", "rl_hard",
           "--reward_funcs", "format", "--output_dir", str(tmp_path / "grpo"), "--publish_repo", repo_name,
           "--max_steps", "1", "--save_steps", "1", "--max_completion_length", "8", "--use_peft", "true",
           "--lora_r", "4")
    text = open(hf_hub_download(repo_name, "README.md", revision="step-1")).read()
    assert f"[`{base}`](https://huggingface.co/{base}/tree/step-2-merged) at revision `step-2-merged`" in text
    adapter = json.loads(open(hf_hub_download(repo_name, "adapter_config.json", revision="step-1")).read())
    assert (adapter["base_model_name_or_path"], adapter["revision"]) == (base, "step-2-merged")


def test_refiner_sft_recipe_card(tmp_path, monkeypatch):
    """The refiner SFT recipe, parsed as a run would be: its card states what it trains and how."""
    from hubtools.models import SMOLLM2_REPO, smollm2_cache_dir
    from train.sft import build_card_info
    monkeypatch.setenv("HUBTOOLS_CACHE", str(tmp_path / "cache"))
    smollm2_cache_dir().mkdir(parents=True)  # where the packaged SmolLM2 lives
    argv = ["--config", str(ROOT / "train" / "recipes" / "rl_hard_sft.yaml")]
    script_args, training_args, model_args = parse_sft(argv)
    assert (script_args.task, script_args.completion_column, model_args.model_name_or_path,
            model_args.use_peft) == ("rl_hard", "reference_answer", "smollm2", False)
    model_args.model_name_or_path = str(smollm2_cache_dir())  # what common.setup resolves `smollm2` to
    info = build_card_info(script_args, training_args, model_args, 1, argv, rows=100)
    text = str(render_model_card(info | {"repo_id": script_args.publish_repo, "step": 10}))
    facts = [f"base_model: {SMOLLM2_REPO}", "SFT (TRL `SFTTrainer`", "`lr = 1e-05` cosine",
             "`num_train_epochs = 2` over 100 rows, effective batch 8 (1 per device × 8 accumulation step(s)",
             "`max_length = 4096`", "`reference_answer` column; loss on the target tokens only",
             "**Seed:** 42.", "<snippet id=ID1,ID2,...>claim</snippet>",
             "Base model for GRPO on the refiner task", "--config train/recipes/rl_hard_sft.yaml"]
    missing = [f for f in facts if f not in text]
    assert not missing, missing


def test_long_rows_are_left_out_whole(tiny_model_dir):
    """GRPO counts the prompt as the policy sees it; SFT the whole prompt + completion conversation."""
    from datasets import Dataset

    from train.common import drop_long_rows
    short, long = row("a?", "x"), row("a?", "x " * 300)
    for r in (short, long):
        r["completion"] = [{"role": "assistant", "content": r.pop("reference_answer")}]
    data = Dataset.from_list([short, long, row("b " * 300, "x") | {"completion": short["completion"]}])
    kept, dropped = drop_long_rows(data, str(tiny_model_dir), "main", 200, flag="max_prompt_length")
    assert dropped == 1 and len(kept) == 2  # the long prompt
    kept, dropped = drop_long_rows(data, str(tiny_model_dir), "main", 200, flag="max_length", with_completion=True)
    assert dropped == 2 and kept[0]["completion"] == short["completion"]
    assert drop_long_rows(data, str(tiny_model_dir), "main", None, flag="max_length") == (data, 0)


def test_lora_on_a_base_revision_points_at_it(tiny_model_dir, tmp_path):
    """LoRA adapters trained on `REPO@step-2` record that revision (AutoPeftModelForCausalLM loads the base
    from it), and the card's load snippet loads that base revision too."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM
    from trl import ModelConfig

    from train.common import peft_config
    args = ModelConfig(model_name_or_path="me/sft", model_revision="step-2", use_peft=True, lora_r=4)
    config = peft_config(args)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    model.save_pretrained(tmp_path / "adapters")
    assert json.loads((tmp_path / "adapters" / "adapter_config.json").read_text())["revision"] == "step-2"
    local = ModelConfig(model_name_or_path=str(tiny_model_dir), model_revision="step-2", use_peft=True)
    assert peft_config(local).revision is None  # a local folder has no revisions
    assert peft_config(ModelConfig(model_name_or_path="me/sft", use_peft=True)).revision is None  # main

    text = str(render_model_card({"repo_id": "me/grpo", "revision": "step-1", "base_model": "me/sft",
                                  "base_model_revision": "step-2", "loading": {"kind": "lora"}}))
    assert 'base = AutoModelForCausalLM.from_pretrained("me/sft", revision="step-2")' in text
    assert "- **Base model:** [`me/sft`](https://huggingface.co/me/sft/tree/step-2) at revision `step-2`" in text
