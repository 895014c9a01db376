"""A report file becomes the disease prompt: what ``mvg-rt prompt``, ``simulate --report`` and a worklist's
``report`` column run.

The rules make the prompt, or an LLM server on this machine when ``--llm-url`` is given, with the rules as its
fallback. What is recorded (run.json's ``prompt_source``): the report's SHA-256, the recaptioner (``rules v1`` or
``llm MODEL``), the LLM's URL and why its answer was not used, the rules' findings kept and dropped (the
table's words). The report's text only with ``--record-report``, its path only with ``--record-paths``: a
report is PHI, and no error or notice here quotes it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mvg_rt.errors import MvgError
from mvg_rt.limits import check
from mvg_rt.prompts.compose import FindingNote, recaption_rules
from mvg_rt.prompts.llm import LlmFailure, ask, check_endpoint
from mvg_rt.prompts.rules import RULES_VERSION

MAX_REPORT_BYTES = 1 << 20  # a report is a page of text; a bigger file is the wrong file


@dataclass(frozen=True)
class RecaptionSettings:
    """How a report becomes a prompt: the rules, or first an OpenAI-compatible LLM server (``llm_url``)."""

    llm_url: str | None = None  # None: the rules only
    llm_model: str | None = None  # None: the first model the server lists
    llm_timeout: float = 30.0  # seconds for each request to the server; then the rules' prompt is used
    llm_allow_remote: bool = False  # a server on another machine may see the report

    def __post_init__(self) -> None:
        check("--llm-timeout", self.llm_timeout)


@dataclass(frozen=True)
class ReportPrompt:
    """The prompt made of a report, how it was made (run.json's ``prompt_source``) and what became of each
    finding the rules found; ``notice``: the line that says why an LLM's answer was not used."""

    prompt: str
    source: dict[str, Any]
    notes: tuple[FindingNote, ...] = ()
    notice: str | None = None


def read_report(path: str | Path) -> tuple[str, str]:
    """The report's text and SHA-256. Errors never name the file (its name may identify the patient), nor quote it."""
    path = Path(path)
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_REPORT_BYTES + 1)
    except FileNotFoundError:
        raise MvgError("the report file (--report) was not found: check its path") from None
    except IsADirectoryError:
        raise MvgError("the report (--report) is a folder: give the report's text file") from None
    except OSError as err:
        raise MvgError(f"cannot read the report file ({err.strerror or type(err).__name__}): give a readable text "
                       "file") from None
    if len(data) > MAX_REPORT_BYTES:
        raise MvgError(f"the report file is over {MAX_REPORT_BYTES >> 20} MiB: give the report's text, a page of it")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise MvgError(f"the report file is not UTF-8 text (byte {err.start}): save it as UTF-8 text") from None
    if not text.strip():
        raise MvgError("the report file is empty: give the report of the expected terminal state")
    return text, hashlib.sha256(data).hexdigest()


def fallback_notice(source: dict[str, Any] | None) -> str | None:
    """The line that says the LLM gave no usable prompt and the rules' is used; None when that did not happen."""
    llm = (source or {}).get("llm") or {}
    if "fallback" not in llm:
        return None
    return f"the LLM at {llm['url']} gave no usable prompt ({llm['fallback']}): the rule-based prompt is used"


def prompt_from_report(path: str | Path, settings: RecaptionSettings = RecaptionSettings(),
                       record_text: bool = False, record_path: bool = False) -> ReportPrompt:
    """The prompt for the report at ``path`` (the endpoint is checked before the report is read)."""
    endpoint = check_endpoint(settings.llm_url, settings.llm_allow_remote) if settings.llm_url else None
    text, digest = read_report(path)
    source: dict[str, Any] = {"kind": "report", "sha256": digest,
                              **({"path": str(path)} if record_path else {}), **({"text": text} if record_text else {})}
    fallback = None
    if endpoint is not None:
        try:
            answer = ask(endpoint, text, settings.llm_model or "", settings.llm_timeout)
            return ReportPrompt(answer.prompt, source | {"recaptioner": f"llm {answer.model}",
                                                         "llm": {"url": endpoint.shown, "model": answer.model}})
        except LlmFailure as err:
            fallback = str(err)
            source["llm"] = {"url": endpoint.shown, "fallback": fallback}
    try:
        made = recaption_rules(text)
    except MvgError as err:
        if fallback is None:
            raise
        raise MvgError(f"{err} (the LLM gave none either: {fallback})") from None
    source |= {"recaptioner": RULES_VERSION, "findings": [dataclasses.asdict(note) for note in made.notes]}
    return ReportPrompt(made.prompt, source, made.notes, fallback_notice(source))
