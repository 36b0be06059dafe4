"""Generation backends on real parts: the tiny model in-process, and a real `transformers serve`
on loopback serving it. The only fake is the 503-answering proxy (tests/faults.py) for retries."""

from __future__ import annotations

import asyncio
import importlib.util
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
    """Records the prompt and server of every request it sends (to prove what the cache saves, and
    where requests go)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested: list[str] = []
        self.servers: list[str] = []

    async def _complete(self, client, messages, params, **kwargs):
        self.requested.append(messages[-1]["content"])
        self.servers.append(str(client.base_url).rstrip("/"))
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
    with pytest.raises(RuntimeError, match="request for model .* failed: Connection error") as err:
        again.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=9, seed=7))  # other params: not cached
    assert isinstance(err.value.__cause__, openai.APIConnectionError)


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
        with pytest.raises(RuntimeError, match=f"{proxy.url}/v1/: request for model .* failed: Error code: 503") as err:
            OpenAIGenerator(f"{proxy.url}/v1", model, max_retries=0).generate(
                PROMPTS[:1], SamplingParams(n=1, max_new_tokens=8))
        assert isinstance(err.value.__cause__, openai.InternalServerError)
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_openai_spreads_requests_over_several_servers(served):
    base_url, model = served
    proxy = FlakySlowProxy(base_url.removesuffix("/v1"), delay=0.05)  # a second server in front of the same model
    try:
        urls = [base_url, f"{proxy.url}/v1"]
        gen = CountingGenerator(urls, model, concurrency=1)
        check_shape(gen.generate(PROMPTS, SamplingParams(n=2, max_new_tokens=4)), PROMPTS, 2)
        assert len(gen.servers) == 8 and set(gen.servers) == set(urls)
    finally:
        proxy.close()


@pytest.mark.timeout(120)
def test_openai_revision_is_asked_for_by_name_and_refused_when_not_served(served):
    base_url, model = served  # pinned to the tiny model's folder: it serves no `REPO@REVISION`
    gen = OpenAIGenerator(base_url, "tests/some-model", revision="step-2", max_retries=0)
    assert gen.model == "tests/some-model@step-2"
    with pytest.raises(RuntimeError, match=r"request for model 'tests/some-model@step-2' failed: Error code: 400"
                                           r".*pinned.*--served-model-name REPO@REVISION"):
        gen.generate(PROMPTS[:1], SamplingParams(n=1, max_new_tokens=4))


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
    urls = ["http://127.0.0.1:1/v1", "http://127.0.0.1:2/v1"]
    auto = make_generator({"backend": "auto", "model": "some-model", "base_url": urls, "revision": "step-2"})
    assert isinstance(auto, OpenAIGenerator) and auto.base_urls == urls and auto.model == "some-model@step-2"


# The default recipe's generator block: one block for every backend.
RECIPE_GENERATOR = {"backend": "auto", "model": "some-model", "batch_size": 32}


def test_default_recipe_generator_works_on_every_backend():
    gen = make_generator({**RECIPE_GENERATOR, "backend": "openai", "base_url": "http://127.0.0.1:1/v1"})
    assert isinstance(gen, OpenAIGenerator)  # batch_size is the CPU backend's: ignored, not an error
    if importlib.util.find_spec("vllm") is None:  # vllm does not run here: the one error is its absence
        with pytest.raises(RuntimeError, match="backend 'vllm': the vllm package is not installed"):
            make_generator({**RECIPE_GENERATOR, "backend": "vllm"})


@pytest.mark.parametrize("backend, extra", [("transformers", {}), ("vllm", {}),
                                            ("openai", {"base_url": "http://127.0.0.1:1/v1"}),
                                            ("auto", {"base_url": "http://127.0.0.1:1/v1"})])
def test_a_misspelled_generator_option_is_an_error_naming_it_and_the_backend(backend, extra):
    spec = {"backend": backend, "model": "some-model", "batchsize": 32, **extra}
    resolved = "openai" if backend == "auto" else backend
    with pytest.raises(ValueError, match=rf"\['batchsize'\] not option\(s\) of backend '{resolved}'"):
        make_generator(spec)


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
