"""Sampling completions from chat prompts: one interface, three backends.

Why one interface: dataset builders (k samples per question), rewards that call a model and eval all
need "n completions per chat prompt"; whether they come from vLLM on a GPU, an OpenAI-compatible
endpoint (vLLM serve, `transformers serve`, a hosted API) or local transformers on the CPU is a
recipe choice (`make_generator`), not something the calling code knows about.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from tqdm.auto import tqdm

from hubtools.hubenv import free_port, stop_process

log = logging.getLogger(__name__)

Messages = list[dict]


@dataclass
class SamplingParams:
    """What to sample: `n` completions per prompt; `temperature == 0` means greedy.

    Sampling is plain temperature + nucleus (top_p) sampling on every backend: no top-k, whatever
    the model's own generation_config says, so that the backends draw from the same distribution.
    """

    n: int = 1
    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")


class Generator(ABC):
    """`generate(prompts, params)` → for each chat prompt, `params.n` assistant completions (text only).

    `model` identifies the model (for cards and cache keys): a local path, a Hub id, or the name an
    endpoint serves.
    """

    model: str

    @abstractmethod
    def generate(self, prompts: list[Messages], params: SamplingParams, *, desc: str | None = None) -> list[list[str]]:
        ...

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


# ---------------------------------------------------------------------------------------- transformers


class TransformersGenerator(Generator):
    """Local transformers (the CPU backend): k samples per prompt in one `generate` call.

    `batch_size` bounds the number of sequences per `generate` call: each call takes
    `max(1, batch_size // n)` prompts and returns `n` sequences for each, so memory stays bounded by
    `max(batch_size, n)` sequences whatever `n` is. A seed seeds torch once per `generate` call: the
    same prompts, params and batch_size give the same samples.
    """

    def __init__(self, model: str, *, revision: str | None = None, batch_size: int = 8, device: str = "cpu",
                 dtype=None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model, self.batch_size, self.device = str(model), batch_size, device
        if isinstance(dtype, str) and dtype != "auto":
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype: {dtype!r} is not a torch dtype (e.g. 'float32', 'bfloat16', 'auto')")
            dtype = getattr(torch, dtype)
        self.tokenizer = AutoTokenizer.from_pretrained(self.model, revision=revision)
        self.tokenizer.padding_side = "left"  # decoder-only: new tokens must follow every prompt directly
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        kwargs = {} if dtype is None else {"dtype": dtype}
        self.lm = AutoModelForCausalLM.from_pretrained(self.model, revision=revision, **kwargs).to(device).eval()

    def generate(self, prompts: list[Messages], params: SamplingParams, *, desc: str | None = None) -> list[list[str]]:
        import torch

        if params.seed is not None:
            torch.manual_seed(params.seed)
        rows_per_prompt = params.n if params.temperature > 0 else 1
        per_call = max(1, self.batch_size // rows_per_prompt)
        out: list[list[str]] = []
        with tqdm(total=len(prompts), desc=desc or "generate", disable=len(prompts) < 2) as bar:
            for start in range(0, len(prompts), per_call):
                chunk = prompts[start:start + per_call]
                out.extend(self._generate_chunk(chunk, params))
                bar.update(len(chunk))
        return out

    def _generate_chunk(self, chunk: list[Messages], params: SamplingParams) -> list[list[str]]:
        import torch

        texts = [self.tokenizer.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in chunk]
        # the chat template already holds any BOS token
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        if params.temperature > 0:
            mode = dict(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=0,
                        num_return_sequences=params.n)
        else:  # greedy: transformers refuses num_return_sequences > 1; all n copies are identical anyway
            mode = dict(do_sample=False)
        with torch.inference_mode():
            seqs = self.lm.generate(**enc, max_new_tokens=params.max_new_tokens,
                                    pad_token_id=self.tokenizer.pad_token_id, **mode)
        new = self.tokenizer.batch_decode(seqs[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        k = mode.get("num_return_sequences", 1)
        return [new[i * k:(i + 1) * k] * (params.n // k) for i in range(len(chunk))]


# ---------------------------------------------------------------------------------------- OpenAI-compatible


def run_sync(make_coro):
    """Run a coroutine from sync code, also when the caller is itself inside a running event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(make_coro())
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(lambda: asyncio.run(make_coro())).result()


class DiskCache:
    """JSON records on disk, one file per request, named by the sha256 of the request (`key`).

    Written atomically (temp file + os.replace), so a killed run leaves only whole records behind and
    a rerun resumes where it stopped. Shared by the generation backend and the judge (hubtools.judge).
    """

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def key(request: dict) -> str:
        return hashlib.sha256(json.dumps(request, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def get(self, key: str) -> dict | None:
        try:
            return json.loads((self.dir / f"{key}.json").read_text())
        except FileNotFoundError:
            return None

    def put(self, key: str, record: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=f".{key}.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, ensure_ascii=False)
        os.replace(tmp, self.dir / f"{key}.json")


class Balancer:
    """Spreads requests over several servers: each goes to the one with the fewest requests in flight
    (ties taken in turn), and no server ever has more than `per_server` in flight."""

    def __init__(self, clients: list, per_server: int):
        self.clients, self.busy, self.turn = clients, [0] * len(clients), 0
        self.sem = asyncio.Semaphore(per_server * len(clients))  # below this total, some server is below per_server

    @contextlib.asynccontextmanager
    async def client(self):
        async with self.sem:
            n = len(self.clients)
            i = min(((self.turn + j) % n for j in range(n)), key=self.busy.__getitem__)
            self.turn += 1
            self.busy[i] += 1
            try:
                yield self.clients[i]
            finally:
                self.busy[i] -= 1


_REVISION_HINT = ("a server answers for a revision only under the name REPO@REVISION: `transformers serve` "
                  "(not pinned to a model) loads it by that name; start vLLM with `vllm serve REPO --revision "
                  "REVISION --served-model-name REPO@REVISION`")


class OpenAIGenerator(Generator):
    """An OpenAI-compatible chat-completions endpoint (vLLM serve, `transformers serve`, hosted APIs).

    - Servers: `base_url` is one URL or a list (e.g. one vLLM server per node); requests go to the
      least busy one, and the servers must serve the same model under the same name.
    - Concurrency: at most `concurrency` requests in flight per server.
    - Revision: with `revision`, the model asked for is `f"{model}@{revision}"` and every reply must
      name exactly that model, else generation stops with an error. Why: a server that does not serve
      that revision must refuse (vLLM and `transformers serve` do: 404/400 for a name they do not
      serve) or be caught answering as another model (servers that ignore the name), so no other
      model's samples are ever taken for this revision's.
    - Retries: the openai client's own, `max_retries` times with exponential backoff (0.5 s doubling,
      capped at 8 s, jittered; `Retry-After` honoured) on 408/409/429/5xx, connection errors and
      timeouts; other 4xx fail at once. A request that still fails is a RuntimeError naming the server.
    - `n`: asked for with `n=k`; servers that return fewer choices (`transformers serve` ignores `n`)
      get further requests until k are collected. With a seed, a request that starts at sample i
      sends `seed + i`, so follow-up requests do not repeat the first sample.
    - Cache (`cache_dir`): one JSON file per sample, named by the sha256 of (model, messages,
      max_new_tokens, temperature, top_p, seed, sample index) and written atomically (temp file +
      os.replace) as soon as it arrives, so a killed build resumes where it stopped and only the
      missing samples are requested. `n` is not in the key: asking for more samples later reuses
      the first ones.
    - `api_key` (None for local servers that need none) is only handed to the client: never logged,
      never in the cache or the repr.
    """

    def __init__(self, base_url: str | list[str], model: str, *, revision: str | None = None,
                 api_key: str | None = None, concurrency: int = 8, max_retries: int = 5, timeout: float = 120,
                 cache_dir: str | Path | None = None):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.base_urls = [base_url] if isinstance(base_url, str) else list(base_url)
        if not self.base_urls or not all(isinstance(u, str) and u for u in self.base_urls):
            raise ValueError(f"base_url: expected a URL or a non-empty list of URLs, got {base_url!r}")
        self.revision = revision
        self.model = f"{model}@{revision}" if revision else str(model)
        self._api_key = api_key
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None

    def __repr__(self) -> str:
        return f"OpenAIGenerator(base_url={self.base_urls!r}, model={self.model!r})"

    def generate(self, prompts: list[Messages], params: SamplingParams, *, desc: str | None = None) -> list[list[str]]:
        return run_sync(lambda: self.agenerate(prompts, params, desc=desc))

    async def agenerate(self, prompts: list[Messages], params: SamplingParams, *,
                        desc: str | None = None) -> list[list[str]]:
        from openai import AsyncOpenAI

        results: list[list[str]] = [[] for _ in prompts]
        # the clients are made here: their connection pools belong to the loop that runs this coroutine
        async with contextlib.AsyncExitStack() as stack:
            clients = [await stack.enter_async_context(AsyncOpenAI(
                base_url=url, api_key=self._api_key or "EMPTY", max_retries=self.max_retries, timeout=self.timeout))
                for url in self.base_urls]
            servers = Balancer(clients, self.concurrency)
            with tqdm(total=len(prompts), desc=desc or "generate", disable=len(prompts) < 2) as bar:
                async def one(i: int) -> None:
                    results[i] = await self._samples(servers, prompts[i], params)
                    bar.update(1)

                await asyncio.gather(*(one(i) for i in range(len(prompts))))
        return results

    async def _samples(self, servers: Balancer, messages: Messages, params: SamplingParams) -> list[str]:
        import openai

        keys = [self._cache_key(messages, params, i) for i in range(params.n)]
        texts = [self._cache_get(k) for k in keys]
        while missing := [i for i, t in enumerate(texts) if t is None]:
            seed = None if params.seed is None else params.seed + missing[0]
            async with servers.client() as client:
                try:
                    got = await self._complete(client, messages, params, n=len(missing), seed=seed)
                except openai.APIError as e:  # retries are spent, or the server refused (a model it does not serve)
                    hint = f" ({_REVISION_HINT})" if self.revision else ""
                    raise RuntimeError(f"{client.base_url}: request for model {self.model!r} failed: {e}{hint}") from e
            if not got:
                raise RuntimeError(f"{client.base_url}: no choices returned for model {self.model!r}")
            for i, text in zip(missing, got):
                texts[i] = text
                self._cache_put(keys[i], i, text)
        return texts

    async def _complete(self, client, messages: Messages, params: SamplingParams, *, n: int,
                        seed: int | None) -> list[str]:
        """One chat-completions request; returns its choices' texts (possibly fewer than `n`)."""
        extra: dict[str, Any] = {"n": n} if n > 1 else {}
        if seed is not None:
            extra["seed"] = seed
        resp = await client.chat.completions.create(model=self.model, messages=messages,
                                                    max_tokens=params.max_new_tokens,
                                                    temperature=params.temperature, top_p=params.top_p, **extra)
        if self.revision and resp.model != self.model:
            raise RuntimeError(f"{client.base_url} answered as model {resp.model!r} when asked for {self.model!r}: "
                               f"it does not serve that revision ({_REVISION_HINT})")
        return [c.message.content or "" for c in sorted(resp.choices, key=lambda c: c.index)]

    def _cache_key(self, messages: Messages, params: SamplingParams, index: int) -> str:
        return DiskCache.key({"model": self.model, "messages": messages, "max_new_tokens": params.max_new_tokens,
                              "temperature": params.temperature, "top_p": params.top_p, "seed": params.seed,
                              "index": index})

    def _cache_get(self, key: str) -> str | None:
        record = self.cache.get(key) if self.cache else None
        return None if record is None else record["text"]

    def _cache_put(self, key: str, index: int, text: str) -> None:
        if self.cache:
            self.cache.put(key, {"model": self.model, "index": index, "text": text})


# ---------------------------------------------------------------------------------------- vLLM


class VLLMGenerator(Generator):
    """vLLM in-process (the GPU backend); vllm is an optional extra, imported only here."""

    def __init__(self, model: str, *, revision: str | None = None, **llm_kwargs):
        import vllm

        self._vllm = vllm
        self.model = str(model)
        self.llm = vllm.LLM(model=self.model, revision=revision, tokenizer_revision=revision, **llm_kwargs)

    def generate(self, prompts: list[Messages], params: SamplingParams, *, desc: str | None = None) -> list[list[str]]:
        sampling = self._vllm.SamplingParams(n=params.n, max_tokens=params.max_new_tokens,
                                             temperature=params.temperature, top_p=params.top_p, seed=params.seed)
        outputs = self.llm.chat(prompts, sampling, use_tqdm=True)
        return [[c.text for c in out.outputs] for out in outputs]


# ---------------------------------------------------------------------------------------- factory

# The options each backend uses, besides `backend`, `model` and `revision` (every backend takes those).
OPTIONS = {
    "transformers": {"batch_size", "device", "dtype"},
    "vllm": {"dtype", "llm_kwargs"},
    "openai": {"base_url", "api_key_env", "concurrency", "max_retries", "timeout", "cache_dir"},
}
# How a local model runs. One recipe serves every backend (the default recipe sets batch_size for the
# CPU), so a backend accepts these and ignores those it has no use for (a server batches and places
# its model itself); any other key it does not use is an error that names it.
LOCAL_TUNING = {"batch_size", "device", "dtype", "llm_kwargs"}
_COMMON = {"backend", "model", "revision"}
BACKENDS = ("auto", *OPTIONS)


def _vllm_usable() -> bool:
    if importlib.util.find_spec("vllm") is None:
        return False
    import torch

    return torch.cuda.is_available()


def make_generator(spec: dict | str) -> Generator:
    """Build a generator from a recipe block (a bare string is a model name with backend "auto").

    Keys: `backend` (transformers | vllm | openai | auto; default auto = openai when `base_url` is
    given, else vllm when it is installed and CUDA is available, else transformers), `model` (through
    `resolve_model`: None/"smollm2" → the packaged SmolLM2), `revision` (of a Hub model), and the
    backend's `OPTIONS`: transformers `batch_size, device, dtype`; vllm `dtype, llm_kwargs`; openai
    `base_url` (required; one URL or a list), `api_key_env` (the NAME of the env var holding the key),
    `concurrency` (per server), `max_retries, timeout, cache_dir`. `LOCAL_TUNING` keys are accepted by
    every backend and ignored by those that do not use them.
    """
    from hubtools.models import resolve_model

    if isinstance(spec, str):
        spec = {"model": spec}
    if not isinstance(spec, dict):
        raise ValueError(f"generator: expected a mapping or a model name, got {type(spec).__name__}")
    if "api_key" in spec:
        raise ValueError("generator.api_key: keys never go in a recipe; put it in an environment variable "
                         "and name that variable in generator.api_key_env")
    backend = spec.get("backend") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"generator.backend: unknown backend {backend!r}; expected one of {list(BACKENDS)}")
    if backend == "auto":
        backend = "openai" if spec.get("base_url") else "vllm" if _vllm_usable() else "transformers"
        log.info("generator backend auto → %s", backend)
    unknown = sorted(set(spec) - _COMMON - OPTIONS[backend] - LOCAL_TUNING)
    if unknown:
        raise ValueError(f"generator: {unknown} not option(s) of backend {backend!r}; it takes "
                         f"{sorted(_COMMON | OPTIONS[backend])} and ignores {sorted(LOCAL_TUNING - OPTIONS[backend])}")
    ignored = sorted(set(spec) & (LOCAL_TUNING - OPTIONS[backend]))
    if ignored:
        log.info("generator backend %s ignores %s", backend, ignored)
    if backend == "vllm" and importlib.util.find_spec("vllm") is None:
        raise RuntimeError("generator backend 'vllm': the vllm package is not installed "
                           "(pip install 'hubtools[gpu]' on a CUDA machine, or use backend transformers or openai)")
    options = {k: v for k, v in spec.items() if k in OPTIONS[backend]}
    model, revision = resolve_model(spec.get("model")), spec.get("revision")

    if backend == "openai":
        base_url = options.pop("base_url", None)
        if not base_url:
            raise ValueError("generator.base_url is required for backend 'openai'")
        api_key = None
        env = options.pop("api_key_env", None)
        if env:
            api_key = os.environ.get(env)
            if not api_key:
                raise ValueError(f"generator.api_key_env: environment variable {env} is not set")
        return OpenAIGenerator(base_url, model, revision=revision, api_key=api_key, **options)
    if backend == "vllm":
        llm_kwargs = {**(options.pop("llm_kwargs", None) or {}), **options}  # dtype: the recipe's own key wins
        return VLLMGenerator(model, revision=revision, **llm_kwargs)
    return TransformersGenerator(model, revision=revision, **options)


# ---------------------------------------------------------------------------------------- transformers serve



@contextlib.contextmanager
def serve_transformers(model_path: str | Path | None = None, port: int | None = None, *,
                       startup_timeout: float = 180.0) -> Iterator[str]:
    """Run `transformers serve` on loopback; yields the base URL (…/v1). It ignores `n`; OpenAIGenerator copes.

    With `model_path` (a local folder) the server is pinned to it (it preloads it, then answers
    /health), offline (HF_HUB_OFFLINE=1), and requests must name the model exactly as given here:
    `OpenAIGenerator(base_url, str(model_path))`. Without, it loads whatever model a request names,
    `REPO@REVISION` included, from the Hub in HF_ENDPOINT: `OpenAIGenerator(base_url, REPO, revision=REV)`.
    """
    port = port or free_port()
    pinned = [str(model_path)] if model_path is not None else []
    cmd = [sys.executable, "-m", "transformers.cli.transformers", "serve", *pinned,
           "--host", "127.0.0.1", "--port", str(port)]
    env = {**os.environ, **({"HF_HUB_OFFLINE": "1"} if pinned else {})}
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            _wait_healthy(proc, f"http://127.0.0.1:{port}/health", startup_timeout, out)
            yield f"http://127.0.0.1:{port}/v1"
        finally:
            stop_process(proc, 15)


def _wait_healthy(proc: subprocess.Popen, url: str, timeout: float, out) -> None:
    def tail() -> str:
        out.seek(0)
        return out.read().decode(errors="replace")[-3000:]

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{tail()}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.25)
    raise RuntimeError(f"transformers serve did not answer {url} within {timeout:.0f} s:\n{tail()}")
