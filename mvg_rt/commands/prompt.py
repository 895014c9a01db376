"""``mvg-rt prompt``: the disease prompt a report makes, before any model is loaded, so it can be checked first.

stdout holds the prompt alone (``$(mvg-rt prompt --report r.txt)`` is the prompt), or with ``--json`` one
object: the prompt and ``prompt_source`` as run.json records it (with the rules' findings kept and dropped).
stderr says per finding whether it was kept or dropped and why, in the rules' words, and why an LLM's answer
was not used; no line quotes the report.
"""

from __future__ import annotations

import json
from typing import Any

import click

from mvg_rt.prompts.report import RecaptionSettings, prompt_from_report


def recaption_settings(opts: dict[str, Any]) -> RecaptionSettings:
    """The ``--llm-*`` options (shared by ``prompt``, ``simulate`` and ``batch``)."""
    return RecaptionSettings(llm_url=opts["llm_url"], llm_model=opts["llm_model"], llm_timeout=opts["llm_timeout"],
                             llm_allow_remote=opts["llm_allow_remote"])


def run(**opts: Any) -> None:
    made = prompt_from_report(opts["report"], recaption_settings(opts))
    if made.notice:
        click.echo(f"mvg-rt: note: {made.notice}", err=True)
    if opts["as_json"]:
        click.echo(json.dumps({"prompt": made.prompt, "prompt_source": made.source}, indent=2))
        return
    for note in made.notes:
        click.echo(f"mvg-rt: {'kept' if note.kept else 'dropped'}: {note.phrase} ({note.reason})", err=True)
    click.echo(made.prompt)
