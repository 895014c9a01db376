"""Re-captioning with an LLM on this machine: an OpenAI-compatible chat-completions server (llama.cpp, vLLM, Ollama).

The report is PHI, so the server must be this machine unless the user says otherwise: :func:`check_endpoint`
refuses a URL whose host resolves to anything but loopback (127.0.0.0/8, ::1) without ``--llm-allow-remote``,
and the request goes to the address that was checked (a second DNS answer cannot send it elsewhere), through no
proxy (``http_proxy`` is ignored) and no redirect (a 3xx is a failure, not a second request).

The request carries a system instruction, the report, and a JSON schema for the answer (``{"prompt": text,
"findings": [text]}``) as OpenAI's ``response_format`` ``json_schema``; a server that refuses that form
(HTTP 400 or 422: llama-cpp-python's server takes the older ``json_object`` with a ``schema``) is asked once
more in the older form. The answer must be JSON of that schema with a non-empty one-line prompt within CLIP's 77
tokens. Anything else (no answer within the timeout, a refused connection, an HTTP error, a body that is not an
answer) is an :class:`LlmFailure` whose reason names what went wrong and never quotes the server: its text may
echo the report.
"""

from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mvg_rt.errors import MvgError
from mvg_rt.prompts.tokens import token_count, token_limit

ANSWER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"prompt": {"type": "string", "minLength": 1, "maxLength": 400},
                   "findings": {"type": "array", "items": {"type": "string"}, "maxItems": 20}},
    "required": ["prompt", "findings"],
    "additionalProperties": False,
}
SYSTEM_INSTRUCTION = (
    "You turn a clinical report of a patient's expected terminal disease state (a chest X-ray, fundus or skin "
    "lesion report) into one short text-to-image prompt for a Stable Diffusion model. Name only the findings the "
    "report asserts, the most severe first, each with its severity and side where the report gives them, in "
    "lower case, at most 40 words, e.g. 'severe cardiomegaly with moderate left pleural effusion'. Leave out "
    "findings the report negates (no, without, resolved, ruled out) or only considers possible (possible, cannot "
    "exclude). Answer with JSON only: {\"prompt\": the prompt, \"findings\": the findings it names}."
)
RESPONSE_FORMATS: tuple[dict[str, Any], ...] = (
    {"type": "json_schema", "json_schema": {"name": "disease_prompt", "strict": True, "schema": ANSWER_SCHEMA}},
    {"type": "json_object", "schema": ANSWER_SCHEMA},  # llama-cpp-python's server
)
REFUSED_FORMAT = (400, 422)  # what a server answers to a response_format it does not take
MAX_ANSWER_BYTES = 1 << 20
MAX_ANSWER_TOKENS = 256


class LlmFailure(Exception):
    """The LLM gave no usable prompt; ``str(err)`` says why in words that quote neither the report nor the server.

    ``status``: the HTTP status when the server answered with an error.
    """

    def __init__(self, reason: str, status: int | None = None) -> None:
        super().__init__(reason)
        self.status = status


@dataclass(frozen=True)
class Endpoint:
    """A checked server: its URL as shown and recorded (no user name, password or query), the URL requests go to
    (the checked address), the Host they name."""

    shown: str
    target: str
    host_header: str

    def at(self, path: str) -> str:
        return f"{self.target.rstrip('/')}/{path}"


@dataclass(frozen=True)
class LlmAnswer:
    prompt: str
    findings: tuple[str, ...]
    model: str


def _loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def check_endpoint(url: str, allow_remote: bool = False) -> Endpoint:
    """``url`` checked (before any report is read): http(s), a host that resolves, loopback unless allowed."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise MvgError(f"--llm-url must be http://HOST:PORT/v1, an OpenAI-compatible server (got {url[:80]!r}), "
                       "e.g. http://127.0.0.1:8080/v1 for llama.cpp's llama-server")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        addresses = [info[4][0] for info in socket.getaddrinfo(parts.hostname, port, type=socket.SOCK_STREAM)]
    except (socket.gaierror, UnicodeError, ValueError) as err:
        raise MvgError(f"--llm-url: cannot resolve {parts.hostname!r} ({type(err).__name__}): give the server's "
                       "address on this machine, e.g. http://127.0.0.1:8080/v1") from None
    remote = [address for address in addresses if not _loopback(address)]
    if remote and not allow_remote:
        raise MvgError(f"--llm-url {parts.hostname} is not this machine (it resolves to {remote[0]}, not 127.0.0.0/8 "
                       "or ::1): the report is PHI and would leave the machine; run the LLM server here (e.g. "
                       "llama-server --host 127.0.0.1), or pass --llm-allow-remote if that server may see patient "
                       "data")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    shown = urlunsplit((parts.scheme, f"{host}:{port}", parts.path, "", ""))
    if parts.scheme == "https" or remote:  # TLS checks the name, and a remote name is the user's choice
        return Endpoint(shown, shown, f"{host}:{port}")
    pinned = f"[{addresses[0]}]" if ":" in addresses[0] else addresses[0]
    return Endpoint(shown, urlunsplit((parts.scheme, f"{pinned}:{port}", parts.path, "", "")), f"{host}:{port}")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # urllib then raises the 3xx as an HTTPError


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def _call(endpoint: Endpoint, path: str, body: dict[str, Any] | None, timeout: float) -> Any:
    """One JSON request; the parsed JSON answer, or :class:`LlmFailure` (HTTP errors keep their code)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(endpoint.at(path), data=data, method="GET" if body is None else "POST",
                                     headers={"Content-Type": "application/json", "Host": endpoint.host_header})
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            raw = response.read(MAX_ANSWER_BYTES + 1)
    except urllib.error.HTTPError as err:
        err.close()
        raise LlmFailure(f"the server answered HTTP {err.code}", err.code) from None
    except (TimeoutError, socket.timeout):
        raise LlmFailure(f"no answer within {timeout:g} s (--llm-timeout)") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            raise LlmFailure(f"no answer within {timeout:g} s (--llm-timeout)") from None
        what = "connection refused (is the server running?)" if isinstance(reason, ConnectionRefusedError) else \
            f"cannot reach the server ({type(reason).__name__})"
        raise LlmFailure(what) from None
    except (OSError, ValueError) as err:  # a reset connection, an answer that is not HTTP (http.client's errors)
        raise LlmFailure(f"the server's answer is not HTTP ({type(err).__name__})") from None
    if len(raw) > MAX_ANSWER_BYTES:
        raise LlmFailure(f"the answer is over {MAX_ANSWER_BYTES >> 20} MiB")
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise LlmFailure("the server's answer is not JSON") from None


def _model(endpoint: Endpoint, timeout: float) -> str:
    """The first model the server lists (GET /models): what llama.cpp and vLLM serve when --llm-model is not given."""
    listed = _call(endpoint, "models", None, timeout)
    try:
        return str(listed["data"][0]["id"])
    except (KeyError, IndexError, TypeError):
        raise LlmFailure("the server lists no model at /models; pass --llm-model NAME") from None


def validate(content: Any) -> tuple[str, tuple[str, ...]]:
    """The prompt and findings of a model's message content, or :class:`LlmFailure` naming what is wrong."""
    if not isinstance(content, str):
        raise LlmFailure("the answer holds no message text (not an OpenAI chat completion)")
    try:
        answer = json.loads(content)
    except (ValueError, RecursionError):
        raise LlmFailure("the model's answer is not JSON") from None
    if not (isinstance(answer, dict) and isinstance(answer.get("prompt"), str)
            and isinstance(answer.get("findings"), list) and all(isinstance(f, str) for f in answer["findings"])):
        raise LlmFailure('the model\'s answer does not match the schema {"prompt": text, "findings": [text]}')
    prompt = " ".join(answer["prompt"].split())
    if not prompt:
        raise LlmFailure("the model's prompt is empty")
    tokens = token_count(prompt)
    if tokens > token_limit():
        raise LlmFailure(f"the model's prompt is {tokens} tokens long; CLIP reads {token_limit()}")
    return prompt, tuple(" ".join(f.split()) for f in answer["findings"])


def _complete(endpoint: Endpoint, body: dict[str, Any], timeout: float) -> Any:
    """The chat completion, asked in the first response format the server takes."""
    *newer, oldest = RESPONSE_FORMATS
    for response_format in newer:
        try:
            return _call(endpoint, "chat/completions", body | {"response_format": response_format}, timeout)
        except LlmFailure as err:
            if err.status not in REFUSED_FORMAT:
                raise
    return _call(endpoint, "chat/completions", body | {"response_format": oldest}, timeout)


def ask(endpoint: Endpoint, report: str, model: str, timeout: float) -> LlmAnswer:
    """The server's prompt for ``report``, validated; :class:`LlmFailure` when there is none to use."""
    model = model or _model(endpoint, timeout)
    body: dict[str, Any] = {
        "model": model, "temperature": 0, "max_tokens": MAX_ANSWER_TOKENS, "stream": False,
        "messages": [{"role": "system", "content": SYSTEM_INSTRUCTION}, {"role": "user", "content": report}],
    }
    completion = _complete(endpoint, body, timeout)
    try:
        content = completion["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        raise LlmFailure("the answer holds no message text (not an OpenAI chat completion)") from None
    prompt, findings = validate(content)
    return LlmAnswer(prompt, findings, model)
