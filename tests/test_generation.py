"""Generation backends on real parts: the tiny model in-process, and a real `transformers serve`
on loopback serving it. The only fake is the 503-answering proxy (tests/faults.py) for retries."""

from __future__ import annotations

import asyncio
import json
import logging

import openai
import pytest

from hubtools.hubenv import free_port
from faults import FlakySlowProxy
from hubtools.generation import (
    Generator,
    OpenAIGenerator,
    SamplingParams,
    TransformersGenerator,
    make_generator,
    serve_transformers,
)

PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Who wrote Hamlet?"}],
    [{"role": "user", "content": "When did Neil Armstrong walk on the Moon?"}],
    [{"role": "user", "content": "What is the highest mountain?"}],
]


def check_shape(out, prompts, n):
    assert len(out) == len(prompts)
    assert all(len(samples) == n and all(isinstance(s, str) for s in samples) for samples in out)


# ------------------------------------------------------------------------------------ transformers


@pytest.fixture(scope="module")
def local(tiny_model_dir):
    return TransformersGenerator(str(tiny_model_dir), batch_size=4)


def test_transformers_shape_and_batching(local):
    # batch_size=4, n=3 → one prompt per generate call; n=2 → two prompts per call
    for n in (3, 2):
        check_shape(local.generate(PROMPTS, SamplingParams(n=n, max_new_tokens=8)), PROMPTS, n)


def test_transformers_samples_differ_and_seed_reproduces(local):
    params = SamplingParams(n=4, max_new_tokens=12, temperature=1.0, seed=123)
    first = local.generate(PROMPTS[:2], params)
    assert all(len(set(samples)) > 1 for samples in first)
    assert local.generate(PROMPTS[:2], params) == first
    assert local.generate(PROMPTS[:2], SamplingParams(n=4, max_new_tokens=12, seed=124)) != first


def test_transformers_greedy_gives_n_identical(local):
    out = local.generate(PROMPTS[:3], SamplingParams(n=3, max_new_tokens=8, temperature=0))
    check_shape(out, PROMPTS[:3], 3)
    assert all(len(set(samples)) == 1 for samples in out)


# ------------------------------------------------------------------------------------ transformers serve


@pytest.fixture(scope="module")
def served(tiny_model_dir):
    """(base_url, model name) of a real `transformers serve` for the tiny model."""
    with serve_transformers(tiny_model_dir) as base_url:
        yield base_url, str(tiny_model_dir)


class CountingGenerator(OpenAIGenerator):
    """Records the prompt of every request it sends (to prove what the cache saves)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested: list[str] = []

    async def _complete(self, client, messages, params, **kwargs):
        self.requested.append(messages[-1]["content"])
        return await super()._complete(client, messages, params, **kwargs)


@pytest.mark.timeout(120)
def test_openai_shape_and_n_via_followups(served):
    base_url, model = served
    gen = CountingGenerator(base_url, model, concurrency=4)
    out = gen.generate(PROMPTS[:3], SamplingParams(n=3, max_new_tokens=8))
    check_shape(out, PROMPTS[:3], 3)
    # transformers serve ignores `n` (one choice per answer): k requests per prompt, samples differ
    assert len(gen.requested) == 9
    assert all(len(set(samples)) > 1 for samples in out)


@pytest.mark.timeout(180)
def test_openai_cache_resumes_without_server(tiny_model_dir, tmp_path):
    cache, model, params = tmp_path / "cache", str(tiny_model_dir), SamplingParams(n=2, max_new_tokens=8, seed=7)
    with serve_transformers(tiny_model_dir) as base_url:
        first = OpenAIGenerator(base_url, model, cache_dir=cache).generate(PROMPTS, params)
    check_shape(first, PROMPTS, 2)
    assert len(list(cache.glob("*.json"))) == len(PROMPTS) * 2
    # the server is gone: any request would fail at once (no retries)
    again = CountingGenerator(base_url, model, cache_dir=cache, max_retries=0)
    assert again.generate(PROMPTS, params) == first
    assert again.requested == []
    with pytest.raises(openai.APIConnectionError):
        again.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=9, seed=7))  # other params: not cached


@pytest.mark.timeout(120)
def test_openai_partial_cache_requests_only_missing(served, tmp_path):
    base_url, model = served
    params = SamplingParams(n=2, max_new_tokens=8)
    done = OpenAIGenerator(base_url, model, cache_dir=tmp_path).generate(PROMPTS[:2], params)  # "killed" here
    resumed = CountingGenerator(base_url, model, cache_dir=tmp_path)
    out = resumed.generate(PROMPTS, params)
    check_shape(out, PROMPTS, 2)
    assert out[:2] == done
    assert sorted(resumed.requested) == sorted([PROMPTS[2][-1]["content"], PROMPTS[3][-1]["content"]] * 2)
    # more samples later: only the new sample indices are requested
    more = CountingGenerator(base_url, model, cache_dir=tmp_path)
    out3 = more.generate(PROMPTS, SamplingParams(n=3, max_new_tokens=8))
    assert [s[:2] for s in out3] == out and len(more.requested) == len(PROMPTS)


@pytest.mark.timeout(120)
def test_openai_retries_on_503(served):
    base_url, model = served
    proxy = FlakySlowProxy(base_url.removesuffix("/v1"), fail_first=2, fail_path="/chat/completions")
    try:
        out = OpenAIGenerator(f"{proxy.url}/v1", model, max_retries=3).generate(
            PROMPTS[:1], SamplingParams(n=1, max_new_tokens=8))
        check_shape(out, PROMPTS[:1], 1)
        assert len(proxy.failed) == 2
        proxy.fail_left = 1
        with pytest.raises(openai.InternalServerError):
            OpenAIGenerator(f"{proxy.url}/v1", model, max_retries=0).generate(
                PROMPTS[:1], SamplingParams(n=1, max_new_tokens=8))
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_openai_key_never_in_cache_or_logs(served, tmp_path, caplog, monkeypatch):
    base_url, model = served
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("MY_LLM_KEY", secret)
    gen = make_generator({"backend": "openai", "model": model, "base_url": base_url,
                          "api_key_env": "MY_LLM_KEY", "cache_dir": str(tmp_path)})
    with caplog.at_level(logging.DEBUG):
        gen.generate(PROMPTS[:2], SamplingParams(n=1, max_new_tokens=8))
    assert secret not in caplog.text and secret not in repr(gen)
    files = list(tmp_path.rglob("*"))
    assert files and all(secret not in f.read_text() for f in files)
    assert {"index", "model", "text"} == set(json.loads(files[0].read_text()))


@pytest.mark.timeout(120)
def test_openai_generate_inside_running_loop(served):
    base_url, model = served
    gen = OpenAIGenerator(base_url, model)

    async def caller():
        return gen.generate(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=4))

    check_shape(asyncio.run(caller()), PROMPTS[:1], 1)


# ------------------------------------------------------------------------------------ make_generator


def test_make_generator_backends(tiny_model_dir, monkeypatch):
    gen = make_generator({"backend": "auto", "model": str(tiny_model_dir), "batch_size": 2})  # no CUDA here
    assert isinstance(gen, TransformersGenerator) and isinstance(gen, Generator) and gen.batch_size == 2
    assert isinstance(make_generator(str(tiny_model_dir)), TransformersGenerator)
    remote = make_generator({"backend": "openai", "model": "some-model", "base_url": "http://127.0.0.1:1/v1",
                             "concurrency": 3})
    assert isinstance(remote, OpenAIGenerator) and remote.concurrency == 3 and remote.model == "some-model"


@pytest.mark.parametrize("spec, field", [
    ({"backend": "tgi", "model": "m"}, "generator.backend"),
    ({"backend": "openai", "model": "m"}, "generator.base_url"),
    ({"backend": "openai", "model": "m", "base_url": "http://x/v1", "api_key": "sk-x"}, "generator.api_key"),
    ({"backend": "openai", "model": "m", "base_url": "http://x/v1", "api_key_env": "HUBTOOLS_UNSET_KEY"},
     "HUBTOOLS_UNSET_KEY"),
    ({"backend": "transformers", "model": "m", "base_url": "http://x/v1"}, "base_url"),
    ({"backend": "transformers", "model": "m", "dtype": "float33"}, "dtype"),
    (["not", "a", "spec"], "generator"),
])
def test_make_generator_rejects_bad_input(spec, field, monkeypatch):
    monkeypatch.delenv("HUBTOOLS_UNSET_KEY", raising=False)
    with pytest.raises(ValueError, match=field) as err:
        make_generator(spec)
    assert "sk-x" not in str(err.value)


def test_sampling_params_validated():
    with pytest.raises(ValueError, match="n must be"):
        SamplingParams(n=0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)


def test_serve_transformers_reports_a_bad_model(tmp_path):
    with pytest.raises(RuntimeError, match="transformers serve exited"):
        with serve_transformers(tmp_path / "no-such-model", free_port(), startup_timeout=60):
            pass
