"""An LLM judge over OpenAI-compatible endpoints: the one client that rubric scores, answer grading,
keypoints and the GEO engine go through (builders, rewards and eval alike).

Why one client: every caller needs the same things from a judge — many calls at once without
overloading the servers, several servers (one vLLM per node) sharing the load, retries, a cache so a
killed build resumes, and replies parsed strictly with failures counted, never scored as 0 or 1.

    judge = Judge("Qwen/Qwen3-8B", ["http://node1:8000/v1", "http://node2:8000/v1"], cache_dir="judge-cache")
    s = await judge.score("rubric_score", scale=(0, 2), question=q, response=r, rubric=text)  # 0..1 or None
    g = await judge.label("grade_answer", GRADE_LABELS, question=q, target=golds, response=r)  # label or None
    judge.score_many("rubric_score", rows)   # sync, for builders and eval
    judge.stats("rubric_score")              # {"calls", "cache_hits", "parse_failures", "errors"}

Prompts are Jinja templates shipped in hubtools/prompts/ (`NAME.j2`), rendered in a sandboxed
environment with StrictUndefined: a variable missing is an error, and rubric or answer text is data,
never template code; a tag in it that would open or close one of the template's blocks is defused
(`render`), so an answer cannot end its `<response>` and write its own criterion. A template renders the user message.

Reply formats (`parse_score`, `parse_label`), after dropping any reasoning (`hubtools.scoring.answer_part`:
up to the first `</think>`; a reasoning never closed leaves nothing to parse):
- score: the whole reply is one JSON object (optionally in a ```json fence) whose "score" is a
  number or a numeric string, or the whole reply is `Score: N`; N must lie in the declared scale and
  is normalized to [0, 1]. Anything else — prose around the JSON, duplicate keys, a boolean, NaN, out
  of range — is a parse failure.
- label: `hubtools.scoring.parse_grader_label` — the whole reply is one of the declared labels.
A parse failure is counted under the call's `metric` (default: the template name), logged (the first
few per metric at WARNING), and returned as None.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import itertools
import json
import logging
import math
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from pathlib import Path

import jinja2
from jinja2.sandbox import SandboxedEnvironment
from tqdm.auto import tqdm

from hubtools.generation import Balancer, DiskCache, run_sync
from hubtools.scoring import Grade, answer_part, parse_grader_label

log = logging.getLogger(__name__)

GRADE_LABELS = tuple(g.value for g in Grade)  # the labels of the `grade_answer` template
STATS = ("calls", "cache_hits", "parse_failures", "errors")
_TRANSIENT = (408, 409, 429)  # the 4xx statuses the openai client retries
_WARN_FIRST = 5  # parse failures / errors logged at WARNING per metric; later ones at DEBUG

_FENCE = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.S | re.I)
_SCORE_LINE = re.compile(r"score\s*:\s*(\S+)", re.I)
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)")

_templates = SandboxedEnvironment(loader=jinja2.PackageLoader("hubtools", "prompts"),
                                  undefined=jinja2.StrictUndefined)


def render(template: str, **variables) -> str:
    """Render the packaged prompt `template` (hubtools/prompts/TEMPLATE.j2), its material fenced: in every
    text variable, a tag that opens or closes one of the template's own blocks (`<response>`, `</text>`,
    any case or spacing) has its `<` written `&lt;`, so an answer cannot close its block and pose as the
    criterion, another text or an instruction."""
    try:
        compiled = _templates.get_template(f"{template}.j2")
    except jinja2.TemplateNotFound:
        names = sorted(t.removesuffix(".j2") for t in _templates.list_templates(extensions=["j2"]))
        raise ValueError(f"judge template {template!r} not found; packaged templates: {names}") from None
    tag = _block_tags(template)
    return compiled.render(**{k: _fenced(v, tag) for k, v in variables.items()})


@functools.cache
def _block_tags(template: str) -> re.Pattern | None:
    """The `<` of any tag naming one of the blocks `template` closes (`</name>` in its source)."""
    source = _templates.loader.get_source(_templates, f"{template}.j2")[0]
    names = sorted(set(re.findall(r"</\s*(\w+)\s*>", source)))
    return re.compile(rf"<(?=\s*/?\s*(?:{'|'.join(names)})\b)", re.I) if names else None


def _fenced(value, tag: re.Pattern | None):
    if tag is None:
        return value
    if isinstance(value, str):
        return tag.sub("&lt;", value)
    if isinstance(value, (list, tuple)):
        return type(value)(_fenced(v, tag) for v in value)
    return value


def reply_payload(reply: str) -> str:
    """What a reply says after any reasoning (`hubtools.scoring.answer_part`), out of its ```json fence
    when the whole of it is one: what every parser of structured judge replies reads."""
    text = answer_part(reply)
    return fence[1] if (fence := _FENCE.fullmatch(text)) else text


def strict_json(text: str):
    """`json.loads` refusing duplicate keys (`{"score": 0, "score": 2}` is ambiguous, not the last one)."""
    return json.loads(text, object_pairs_hook=_unique_keys)


def _unique_keys(pairs: list[tuple]) -> dict:
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys}")
    return dict(pairs)


def parse_score(reply: str, scale: tuple[float, float]) -> float:
    """The judge's score normalized to [0, 1] (formats in the module docstring); ValueError otherwise."""
    lo, hi = scale
    text = reply_payload(reply)
    if line := _SCORE_LINE.fullmatch(text.replace("*", "")):
        value = line[1]
    else:
        try:
            obj = strict_json(text)
        except ValueError:
            raise ValueError(f"not a JSON object or 'Score: N': {reply!r}") from None
        if not isinstance(obj, dict) or "score" not in obj:
            raise ValueError(f"no 'score' key in {reply!r}")
        value = obj["score"]
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        value = float(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"score is not a number: {value!r}")
    if not lo <= value <= hi:
        raise ValueError(f"score {value} is outside the scale {lo}..{hi}")
    return (value - lo) / (hi - lo)


def parse_label(reply: str, labels: Sequence[str] | Mapping[str, str]) -> str:
    """The whole reply (after any reasoning) as one of `labels`; ValueError otherwise."""
    return parse_grader_label(answer_part(reply), labels)


class Judge:
    """Async judge client over one or more OpenAI-compatible servers serving `model` under that name.

    - `concurrency`: requests in flight per server (a semaphore; requests go to the least busy server).
    - Retries: the openai client's, `max_retries` times with jittered exponential backoff (0.5 s
      doubling, capped at 8 s; `Retry-After` honoured) on 408/409/429/5xx, timeouts and connection
      errors. A call whose retries are spent counts as an error and returns None (missing). A request
      the server refuses as wrong (any other 4xx: an unknown model name — `transformers serve` says
      400, vLLM 404 —, a bad key, a prompt longer than the judge's context) raises RuntimeError:
      retrying cannot fix it, and scoring every row as missing would hide it.
    - Cache (`cache_dir`): the raw reply per (model, messages, temperature, max_tokens, extra_body),
      so a resumed run asks only for what is missing and a changed parser applies to cached replies.
      Errors are not cached (a resumed run asks again).
    - Sampling: `temperature` (0: greedy), `max_tokens` (leave room for reasoning with a thinking
      judge), `extra_body` sent as is (e.g. {"chat_template_kwargs": {"enable_thinking": False}}).
    - Event loops: clients are made per running loop (a connection pool belongs to one loop), so one
      Judge serves TRL's reward loop and the sync helpers alike; `aclose()` closes the running loop's.
    - `processes`: HTTP clients in that many worker processes (each a Judge of its own with its share of
      `concurrency`), for when the client's CPU, not the servers, limits throughput: one event loop
      spends about 1-3 ms of CPU per call in the HTTP stack (bench/judge.py), so it tops out at a few
      hundred calls/s however many servers there are. Rendering, the cache, parsing and the counters
      stay in this process. Default 1: requests go out from the calling loop. The processes are
      spawned (no fork of a process holding CUDA or threads), so a script of yours that uses them needs
      the usual `if __name__ == "__main__":` guard.
    - `api_key` is only handed to the client: never logged, cached or shown in the repr.
    """

    def __init__(self, model: str, base_urls: str | Sequence[str], *, api_key: str | None = None,
                 concurrency: int = 16, max_retries: int = 5, timeout: float = 120,
                 cache_dir: str | Path | None = None, temperature: float = 0.0, max_tokens: int = 512,
                 extra_body: dict | None = None, processes: int = 1):
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        if not 1 <= processes <= concurrency:
            raise ValueError(f"processes must be between 1 and concurrency ({concurrency}), got {processes}")
        self.base_urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not self.base_urls or not all(isinstance(u, str) and u for u in self.base_urls):
            raise ValueError(f"base_urls: expected a URL or a non-empty list of URLs, got {base_urls!r}")
        self.model, self._api_key = str(model), api_key
        self.concurrency, self.max_retries, self.timeout = concurrency, max_retries, timeout
        self.params = {"temperature": temperature, "max_tokens": max_tokens, "extra_body": extra_body or {}}
        self.cache = DiskCache(cache_dir) if cache_dir is not None else None
        self._counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
        self._servers: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # loop -> Balancer
        self.processes, self._workers = processes, None

    def __repr__(self) -> str:
        return f"Judge(model={self.model!r}, base_urls={self.base_urls!r})"

    # ------------------------------------------------------------------------------ async API

    async def complete(self, template: str, /, *, metric: str | None = None, **variables) -> str | None:
        """The judge's raw reply to the rendered `template`; None when the call failed (counted)."""
        return await self._ask(render(template, **variables), metric or template)

    async def score(self, template: str, /, *, scale: tuple[float, float] = (0, 2), metric: str | None = None,
                    **variables) -> float | None:
        """The judge's score on `scale` normalized to [0, 1]; None on a failed call or unparsable reply.

        The template also gets `lo` and `hi` (the scale's ends) so prompt and parser agree.
        """
        lo, hi = scale
        if not lo < hi:
            raise ValueError(f"scale: expected (lo, hi) with lo < hi, got {scale!r}")
        metric = metric or template
        reply = await self._ask(render(template, lo=lo, hi=hi, **variables), metric)
        return None if reply is None else self.parsed(parse_score, reply, scale, metric)

    async def label(self, template: str, labels: Sequence[str] | Mapping[str, str], /, *,
                    metric: str | None = None, **variables) -> str | None:
        """The judge's label, one of `labels` (names, or {letter: name}); None on failure."""
        metric = metric or template
        reply = await self._ask(render(template, **variables), metric)
        return None if reply is None else self.parsed(parse_label, reply, labels, metric)

    def close(self) -> None:
        """Stop the client processes (`processes` > 1); a later call starts new ones."""
        if self._workers is not None:
            self._workers.close()
            self._workers = None

    async def aclose(self) -> None:
        """Close the clients of the running event loop (the next call makes new ones)."""
        servers = self._servers.pop(asyncio.get_running_loop(), None)
        for client in servers.clients if servers else ():
            await client.close()

    # ------------------------------------------------------------------------------ sync API

    def score_many(self, template: str, rows: Sequence[Mapping], *, scale: tuple[float, float] = (0, 2),
                   metric: str | None = None) -> list[float | None]:
        """`score` for each row of template variables, concurrently; for code that is not async."""
        return self.run_many(lambda row: self.score(template, scale=scale, metric=metric, **row), rows, template)

    def label_many(self, template: str, labels: Sequence[str] | Mapping[str, str], rows: Sequence[Mapping], *,
                   metric: str | None = None) -> list[str | None]:
        """`label` for each row of template variables, concurrently; for code that is not async."""
        return self.run_many(lambda row: self.label(template, labels, metric=metric, **row), rows, template)

    def run_many(self, call, rows: Sequence, desc: str) -> list:
        """`await call(row)` for every row concurrently (the per-server limit bounds what is in flight),
        with a progress bar, from sync code; this loop's connections are closed after."""
        async def run():
            try:
                with tqdm(total=len(rows), desc=desc, disable=len(rows) < 2) as bar:
                    async def one(row):
                        result = await call(row)
                        bar.update(1)
                        return result

                    return await asyncio.gather(*(one(row) for row in rows))
            finally:
                await self.aclose()

        return run_sync(run)

    def stats(self, metric: str | None = None) -> dict[str, int]:
        """Counters since this Judge was made: for `metric`, or summed over all metrics."""
        counts = [self._counts.get(metric, {})] if metric is not None else list(self._counts.values())
        return {k: sum(c.get(k, 0) for c in counts) for k in STATS}

    # ------------------------------------------------------------------------------ internals

    def _balancer(self) -> Balancer:
        from openai import AsyncOpenAI

        loop = asyncio.get_running_loop()
        if loop not in self._servers:
            self._servers[loop] = Balancer([
                AsyncOpenAI(base_url=url, api_key=self._api_key or "EMPTY", max_retries=self.max_retries,
                            timeout=self.timeout) for url in self.base_urls], self.concurrency)
        return self._servers[loop]

    async def _ask(self, prompt: str, metric: str) -> str | None:
        counts = self._counts[metric]
        counts["calls"] += 1
        messages = [{"role": "user", "content": prompt}]
        key = DiskCache.key({"model": self.model, "messages": messages, **self.params})
        if self.cache and (hit := self.cache.get(key)) is not None:
            counts["cache_hits"] += 1
            return hit["text"]
        if self.processes > 1:
            if self._workers is None:
                self._workers = _Workers(self._worker_settings())
                weakref.finalize(self, self._workers.close)
            status, text = await self._workers.call(messages)
        else:
            status, text = await self._call(messages)
        if status == "refused":
            raise RuntimeError(f"the request to judge model {self.model!r} was refused (check the model name, API "
                               f"key and the judge's context length): {text}")
        if status == "error":
            counts["errors"] += 1
            self._log(counts["errors"], "judge %s: call failed (error #%d): %s", metric, counts["errors"], text)
            return None
        if self.cache:  # creating a file takes ~0.5 ms on some disks: keep it off the event loop
            await asyncio.to_thread(self.cache.put, key, {"model": self.model, "text": text})
        return text

    async def _call(self, messages: list[dict]) -> tuple[str, str]:
        """One request from this process, classified: ("ok", reply), ("refused", why) for a 4xx that
        retrying cannot fix, or ("error", why) once the client's retries are spent."""
        import openai

        async with self._balancer().client() as client:
            try:
                return "ok", await self._request(client, messages)
            except openai.APIError as e:
                refused = (isinstance(e, openai.APIStatusError) and e.status_code < 500
                           and e.status_code not in _TRANSIENT)
                return ("refused" if refused else "error"), f"{client.base_url}: {e}"

    def _worker_settings(self) -> list[dict]:
        """Judge arguments of each worker process: the same servers, `concurrency` split among them."""
        share, extra = divmod(self.concurrency, self.processes)
        return [{"model": self.model, "base_urls": self.base_urls, "api_key": self._api_key,
                 "concurrency": share + (i < extra), "max_retries": self.max_retries, "timeout": self.timeout,
                 **self.params} for i in range(self.processes)]

    async def _request(self, client, messages: list[dict]) -> str:
        """One chat-completions request; the first choice's text.

        `client.post` rather than `client.chat.completions.create`: the same request, retries and
        typed reply, without the per-call transform of the typed parameters, which our plain JSON
        parameters do not need and which took a fifth of the client's CPU per call (1.28 → 1.03 ms
        against bench/judge.py's latency server).
        """
        from openai.types.chat import ChatCompletion

        p = self.params
        body = {"model": self.model, "messages": messages, "temperature": p["temperature"],
                "max_tokens": p["max_tokens"], **p["extra_body"]}
        resp = await client.post("/chat/completions", body=body, cast_to=ChatCompletion)
        return resp.choices[0].message.content or ""

    def parsed(self, parse, reply: str, spec, metric: str):
        """`parse(reply, spec)`, or None with the failure counted under `metric` and logged."""
        try:
            return parse(reply, spec)
        except ValueError as e:
            counts = self._counts[metric]
            counts["parse_failures"] += 1
            self._log(counts["parse_failures"], "judge %s: unparsable reply (failure #%d): %s",
                      metric, counts["parse_failures"], str(e)[:300])
            return None

    @staticmethod
    def _log(nth: int, msg: str, *args) -> None:
        log.log(logging.WARNING if nth <= _WARN_FIRST else logging.DEBUG, msg, *args)


class _Workers:
    """Judge client processes (`Judge(processes=N)`): requests go to the one with the fewest in flight
    over a pipe; a reader thread per pipe hands each reply to the event loop that asked. A process that
    dies fails its requests as errors (counted, None), never hangs them."""

    def __init__(self, settings: list[dict]):
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process holding CUDA or threads
        self.conns, self.replies, self.procs = [], [], []  # one-way pipes: requests out, replies in
        for kwargs in settings:
            request_in, request_out = ctx.Pipe(duplex=False)
            reply_in, reply_out = ctx.Pipe(duplex=False)
            proc = ctx.Process(target=_worker_main, args=(request_in, reply_out, kwargs), daemon=True,
                               name="hubtools-judge")
            proc.start()
            request_in.close()
            reply_out.close()
            self.conns.append(request_out)
            self.replies.append(reply_in)
            self.procs.append(proc)
        self.busy = [0] * len(settings)
        self.send_locks = [threading.Lock() for _ in settings]
        self.pending: dict[int, tuple] = {}  # request id -> (loop, future, worker)
        self.lock, self.ids, self.closed = threading.Lock(), itertools.count(), False
        for i in range(len(settings)):
            threading.Thread(target=self._read, args=(i,), daemon=True, name="hubtools-judge-reader").start()

    async def call(self, messages: list[dict]) -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        i = min(range(len(self.conns)), key=self.busy.__getitem__)
        rid = next(self.ids)
        with self.lock:
            self.pending[rid] = (loop, future, i)
        self.busy[i] += 1
        try:
            try:
                with self.send_locks[i]:
                    self.conns[i].send((rid, messages))
            except (OSError, ValueError) as e:  # the process is gone
                with self.lock:
                    self.pending.pop(rid, None)
                return "error", f"judge client process {i} is gone: {e}"
            return await future
        finally:
            self.busy[i] -= 1

    def _read(self, i: int) -> None:
        while True:
            try:
                rid, status, text = self.replies[i].recv()
            except (EOFError, OSError):
                break
            with self.lock:
                entry = self.pending.pop(rid, None)
            if entry:
                _hand_back(entry, (status, text))
        with self.lock:  # the process ended: fail what it still held
            lost = [rid for rid, (_, _, w) in self.pending.items() if w == i]
            entries = [self.pending.pop(rid) for rid in lost]
        for entry in entries:
            _hand_back(entry, ("error", f"judge client process {i} exited"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for conn, lock in zip(self.conns, self.send_locks):
            try:
                with lock:
                    conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self.procs:
            proc.join(5)
            if proc.is_alive():
                proc.terminate()
        for conn in self.conns + self.replies:
            conn.close()


def _hand_back(entry: tuple, value) -> None:
    """Resolve a pending request's future on the loop that awaits it (from a reader thread)."""
    loop, future, _ = entry

    def resolve() -> None:
        if not future.done():
            future.set_result(value)
    try:
        loop.call_soon_threadsafe(resolve)
    except RuntimeError:  # that loop is closed: nobody is waiting any more
        pass


def _worker_main(requests, replies, kwargs: dict) -> None:
    """A judge client process: requests from the pipe, each sent by a Judge of its own, replies back."""
    judge = Judge(**kwargs)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue = asyncio.Queue()

        def read() -> None:
            while True:
                try:
                    message = requests.recv()
                except (EOFError, OSError):
                    message = None
                loop.call_soon_threadsafe(inbox.put_nowait, message)
                if message is None:
                    return

        threading.Thread(target=read, daemon=True).start()
        tasks: set[asyncio.Task] = set()

        async def one(rid: int, messages: list[dict]) -> None:
            try:
                status, text = await judge._call(messages)
            except Exception as e:  # noqa: BLE001 — a bug here must come back as an error, not hang the caller
                status, text = "error", f"{type(e).__name__}: {e}"
            replies.send((rid, status, text))

        while (message := await inbox.get()) is not None:
            task = asyncio.create_task(one(*message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        await asyncio.gather(*tasks)
        await judge.aclose()

    asyncio.run(main())
