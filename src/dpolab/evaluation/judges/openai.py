"""`openai:MODEL` — a judge behind an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM,
llama.cpp, ...).

httpx2 speaks HTTP (one pooled client per judge, shared by its threads); the retries are ours (below),
not the client's. The API key comes from an environment variable (`OPENAI_API_KEY`, or the one
`api_key_env` names) and appears in no message, log or file.

Faults:
- 408, 409, 429 and 5xx replies, connection failures and timeouts are retried `max_retries` times;
  then the judge stops with a `JudgeError` naming the attempts and the last fault. Before retry
  number k+1 (k = 0, 1, ...) it waits the server's Retry-After when it sends one in seconds (at most
  60 s), else a jittered exponential back-off: a time drawn uniformly from [d, 1.5·d] with
  d = min(backoff·2^k, 40 s), so never more than 60 s, and judges that failed together do not
  retry together (`backoff_bounds`).
- 401/403 (bad key) and other 3xx/4xx replies stop the judge at once with the server's message (a
  4xx may be a setup error, so it is not skipped); a 400, 413 or 422 is marked as being about that
  one request (`JudgeError.about_request`), so that the caller can name the pair it stopped at.
- A 200 reply that is not a chat completion (not JSON, no `choices[0]`) stops the judge at once:
  it usually means that --base-url points at something else.
- A well-formed reply without a readable verdict is a judgement, `unparsed`, not an error; so is a
  chat completion without text (`content: null`, e.g. a content filter or a refusal), kept with
  the whole reply as its raw text.
When the judge stops, the judgements already returned have been handed to the caller (and so
cached); requests not yet sent are not sent.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import httpx2

from dpolab.evaluation.judges.base import (
    Judge,
    JudgeError,
    Judgement,
    JudgeOptions,
    JudgeRequest,
    load_judge_prompt,
    parse_verdict,
    render_judge_prompt,
    template_hash,
)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
# refusals of one request's content (too long, malformed) rather than of the judge's setup
REQUEST_STATUS = frozenset({400, 413, 422})
MAX_WAIT = 60.0  # seconds: the longest wait before a retry, Retry-After or back-off
JITTER = 0.5  # a back-off wait is drawn from [d, (1 + JITTER)·d]
MAX_BACKOFF = MAX_WAIT / (1 + JITTER)  # the cap of d, so that a drawn wait stays within MAX_WAIT


class OpenAIJudge(Judge):
    def __init__(
        self,
        model: str,
        *,
        template: str,
        base_url: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        concurrency: int = 4,
        timeout: float = 60.0,
        max_retries: int = 5,
        backoff: float = 1.0,
        temperature: float = 0.0,
        max_tokens: int | None = None,
    ):
        self.model = model
        self.spec = f"openai:{model}"
        self.template = template
        self.base_url = (base_url or os.environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.url = self.base_url + "/chat/completions"
        if not self.base_url.startswith(("http://", "https://")):
            raise JudgeError(
                f"{self.spec}: the base URL {self.base_url!r} must start with http:// or https://"
            )
        self.api_key_env = api_key_env
        self._key = os.environ.get(api_key_env) or None
        if self._key is None and self.base_url == DEFAULT_BASE_URL:
            raise JudgeError(f"{self.spec}: no API key; put it in the environment variable {api_key_env}")
        self.concurrency = max(1, int(concurrency))
        self.timeout, self.max_retries, self.backoff = float(timeout), int(max_retries), float(backoff)
        self.temperature, self.max_tokens = temperature, max_tokens
        self._random = random.Random()  # the back-off's jitter
        headers = {"Content-Type": "application/json"}
        if self._key:
            headers["Authorization"] = f"Bearer {self._key}"
        # one connection per thread of `judge_many`, so that no request waits for the pool
        limits = httpx2.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        self._client = httpx2.Client(headers=headers, timeout=httpx2.Timeout(self.timeout), limits=limits)

    def close(self) -> None:
        """Close the pooled connections (the judge sends nothing after this)."""
        self._client.close()

    @property
    def cache_id(self) -> str:
        return f"{self.spec}|{self.base_url}|prompt={template_hash(self.template)}|temperature={self.temperature}"

    # -- one HTTP call, with retries ------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text

    def _server_message(self, body: bytes) -> str:
        text = body.decode("utf-8", errors="replace")
        try:
            data = json.loads(text)
            message = (
                data.get("error", {}).get("message")
                if isinstance(data.get("error"), dict)
                else data.get("error")
            )
            text = str(message or text)
        except (ValueError, AttributeError):
            pass
        return self._scrub(" ".join(text.split())[:300])

    def backoff_bounds(self, attempt: int) -> tuple[float, float]:
        """The shortest and longest back-off wait after failed attempt number `attempt` (from 0):
        [d, (1 + JITTER)·d] with d = min(backoff·2^attempt, MAX_BACKOFF), within MAX_WAIT."""
        d = min(MAX_BACKOFF, self.backoff * 2.0 ** min(attempt, 64))
        return d, (1 + JITTER) * d

    def _wait(self, attempt: int, retry_after: str | None) -> float:
        """Seconds to wait before the next attempt: the server's Retry-After (seconds, at most
        MAX_WAIT) when it gives one, else a draw from `backoff_bounds(attempt)`."""
        if retry_after is not None:
            try:
                return min(MAX_WAIT, max(0.0, float(retry_after)))
            except ValueError:
                pass  # an HTTP date, or garbage: back off as if none were given
        return self._random.uniform(*self.backoff_bounds(attempt))

    def complete(self, content: str) -> str | None:
        """The reply text to one user message (None: a chat completion without text)."""
        return self._content(self._post(content))

    def _post(self, content: str) -> bytes:
        """The body of the server's 2xx reply to one user message, after retries."""
        payload: dict = {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "temperature": self.temperature,
        }
        if self.max_tokens is not None:
            payload["max_tokens"] = self.max_tokens
        data = json.dumps(payload).encode("utf-8")
        last = ""
        for attempt in range(self.max_retries + 1):
            retry_after = None
            try:
                response = self._client.post(self.url, content=data)
            except httpx2.TimeoutException:
                last = f"no reply within {self.timeout:g} s"
            except httpx2.RequestError as err:  # refused, reset, DNS, TLS, a broken reply
                last = f"{type(err).__name__}: {self._scrub(str(err))}" if str(err) else type(err).__name__
            else:
                status = response.status_code
                if 200 <= status < 300:
                    return response.content
                message = self._server_message(response.content)
                if status in (401, 403):
                    raise JudgeError(
                        f"{self.url} refused the request (HTTP {status}: {message}); check the API key in "
                        f"{self.api_key_env}"
                    )
                if status not in RETRY_STATUS:
                    moved = response.headers.get("Location")
                    where = f" (it points to {self._scrub(moved)}; is --base-url right?)" if moved else ""
                    raise JudgeError(
                        f"{self.url} answered HTTP {status}: {message}{where}",
                        about_request=status in REQUEST_STATUS,
                    )
                last = f"HTTP {status}: {message}"
                retry_after = response.headers.get("Retry-After")
            if attempt < self.max_retries:
                time.sleep(self._wait(attempt, retry_after))
        raise JudgeError(f"{self.url}: gave up after {self.max_retries + 1} attempts ({last})")

    def _content(self, body: bytes) -> str | None:
        """`choices[0].message.content` of a chat completion; None when the completion has no
        text (content null or absent, or no message after a content filter)."""
        try:
            data = json.loads(body)
            choice = data["choices"][0]
            message = choice.get("message")
            if message is None and choice.get("finish_reason") == "content_filter":
                return None
            content = message.get("content")
            if content is None or isinstance(content, str):
                return content
            raise TypeError
        except (ValueError, KeyError, IndexError, TypeError, AttributeError):
            shown = self._scrub(body[:200].decode("utf-8", errors="replace"))
            raise JudgeError(
                f"{self.url} sent a reply that is not a chat completion ({shown!r}); is --base-url right?"
            ) from None

    # -- the Judge interface --------------------------------------------------------------------

    def judge(self, request: JudgeRequest) -> Judgement:
        body = self._post(render_judge_prompt(self.template, request))
        reply = self._content(body)
        if reply is None:  # no text to read a verdict from: keep the whole reply
            return Judgement("unparsed", self._scrub(body.decode("utf-8", errors="replace")))
        reply = self._scrub(reply)  # a server that echoes the request headers must not leak the key
        return Judgement(parse_verdict(reply), reply)

    def judge_many(
        self, requests: Sequence[JudgeRequest], on_result: Callable[[int, Judgement], None]
    ) -> None:
        """Up to `concurrency` requests in flight; results handed over (in this thread) as they come.
        On a fatal error no new request is sent, those in flight are awaited and handed over, and
        the first error is raised."""
        stop = threading.Event()

        def task(index: int, request: JudgeRequest) -> Judgement | None:
            if stop.is_set():
                return None
            try:
                return self.judge(request)
            except JudgeError as err:
                err.request_index = index
                stop.set()
                raise

        error: BaseException | None = None
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            pending = {pool.submit(task, i, r): i for i, r in enumerate(requests)}
            try:
                while pending:
                    # each result as it comes (FIRST_EXCEPTION would wait for all of them, and a
                    # kill before the end would lose every judgement made until then)
                    done, _ = wait(pending, return_when=FIRST_COMPLETED)
                    for future in done:
                        index = pending.pop(future)
                        if future.cancelled():
                            continue
                        if future.exception() is not None:
                            error = error or future.exception()
                            continue
                        if future.result() is not None:
                            on_result(index, future.result())
                    if error is not None:
                        stop.set()
                        for future in pending:
                            future.cancel()
            finally:
                # an interrupt or a failing callback: send nothing more
                stop.set()
                for future in pending:
                    future.cancel()
        if error is not None:
            raise error


def build(spec: str, target: str, options: JudgeOptions) -> OpenAIJudge:
    """`openai:MODEL`; `options.extra` holds the endpoint's settings (base_url, api_key_env, ...)."""
    return OpenAIJudge(target, template=load_judge_prompt(options.judge_prompt), **options.extra)
