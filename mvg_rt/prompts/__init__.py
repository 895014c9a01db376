"""Disease prompts from clinical reports (issue 21): the report of the expected terminal state becomes the prompt.

The default recaptioner is rule-based and needs no model (:mod:`~mvg_rt.prompts.rules` holds its tables,
:mod:`~mvg_rt.prompts.extract` finds the findings, :mod:`~mvg_rt.prompts.compose` writes the prompt); an
OpenAI-compatible LLM server on this machine may re-caption instead (:mod:`~mvg_rt.prompts.llm`), with the
rules as its fallback. :mod:`~mvg_rt.prompts.report` is the entry point the jobs use. Reports are PHI: their
text reaches no log, error or run.json unless the user asks (``--record-report``).
"""
