"""Finding mentions in a report: where each finding is said, whether it is asserted, and its modifiers.

The method is NegEx's (Chapman et al. 2001), with the rules of :mod:`mvg_rt.prompts.rules` as its tables:

1. The report is rewritten (:data:`~mvg_rt.prompts.rules.REWRITES`) and cut into sentences (``.``, ``!``,
   ``;``, a blank line, a new bullet line) and those into clauses (``but``, ``however``, ...). No cue reaches
   past its clause.
2. In a clause, findings and cues are matched; where two matches overlap the longer wins (``non-proliferative
   diabetic retinopathy`` is not ``proliferative diabetic retinopathy``; ``cannot be excluded`` is not
   ``excluded``).
3. A post cue (``has resolved``, ``cannot be excluded``) covers the finding right before it, with only verbs
   and side words between, and the list before that (``a, b and c have resolved``: a list ends in a
   conjunction) unless its verb is singular. A pre cue (``no``,
   ``possible``) covers the first finding after it and the findings listed after that, until an assertion
   word (``there is``, ``with``, ...), another cue, or a severity word after a separator (``no effusion,
   moderate cardiomegaly``) ends its list. A post cue that covers a finding is no pre cue for the next one.
4. A finding's modifiers come from its window: the words from the last separator before it (or the finding
   or cue before it) to the first separator after it. Its severity is the strongest severity word there, its
   side left, right or bilateral (both named: bilateral), its lobe the first lobe named.

Only the table's words leave this module (a finding's phrase, a cue's label): never the report's text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache

from mvg_rt.prompts.rules import (ASSERTIONS, BOTH, CLAUSE_BREAKS, CUES, FINDINGS, LIST_WORDS, LOBE, POST,
                                  POST_GAP_WORDS, PRE, PSEUDO, REWRITES, SEPARATORS, SEVERITY_LEVELS, SIDES,
                                  SINGULAR_VERBS, Cue, Finding)

ASSERTED = "asserted"


@dataclass(frozen=True)
class Mention:
    """One finding said once: its status (asserted, likely, negated, uncertain), the cue that decided it, its
    modifiers, and ``order`` (where in the report: the first mention of a finding is its place in ties)."""

    finding: Finding
    status: str
    cue: str | None
    level: int | None  # the strongest severity word's level; None: no severity word
    sides: frozenset[str]
    lobe: str | None
    order: int


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    item: Finding | Cue
    severity: str | None = None  # a {severity} group inside a finding's own pattern


def _alternation(words: Iterable[str]) -> str:
    """A regex alternation of ``words``, longest first (``very large`` before ``large``)."""
    return "|".join(re.escape(word) for word in sorted(words, key=len, reverse=True))


SEVERITY = _alternation(SEVERITY_LEVELS)
_SEVERITY_RE = re.compile(rf"(?<![\w-])(?:{SEVERITY})(?![\w-])", re.IGNORECASE)
_SIDE_RE = re.compile(rf"(?<![\w-])(?:{_alternation(SIDES)})(?![\w-])", re.IGNORECASE)
_LOBE_RE = re.compile(rf"\b{LOBE}\b", re.IGNORECASE)
_ASSERTION_RE = re.compile(ASSERTIONS, re.IGNORECASE)
_SEPARATOR_RE = re.compile(SEPARATORS, re.IGNORECASE)
_SEPARATED_SEVERITY_RE = re.compile(rf"(?:{SEPARATORS}).*(?<![\w-])(?:{SEVERITY})(?![\w-])", re.IGNORECASE)
_CLAUSE_RE = re.compile(CLAUSE_BREAKS, re.IGNORECASE)
_SENTENCE_RE = re.compile(r"(?<!\d)\.|\.(?!\d)|[!;]|\n\s*\n|\n(?=\s*(?:[-*\u2022]|\d+[.)]\s))")
_MODIFIER_WORDS = (*SIDES, *SEVERITY_LEVELS, "lobe", "lobes", "upper", "middle", "lower")
_POST_GAP_RE = re.compile(rf"(?:\s|\b(?:{_alternation((*POST_GAP_WORDS, *_MODIFIER_WORDS))})\b)*", re.IGNORECASE)
_LIST_GAP_RE = re.compile(rf"(?:\s|,|(?<![\w-])(?:{_alternation((*LIST_WORDS, *_MODIFIER_WORDS))})(?![\w-]))*",
                          re.IGNORECASE)
_CONJUNCTION_RE = re.compile(r"\b(?:and|or|nor)\b|&", re.IGNORECASE)
_SINGULAR_RE = re.compile(rf"\b(?:{_alternation(SINGULAR_VERBS)})\b", re.IGNORECASE)


def _bounded(pattern: str) -> re.Pattern[str]:
    """A table pattern matched on whole words only (a hyphen joins words: ``non-proliferative`` is one)."""
    return re.compile(rf"(?<![\w-])(?:{pattern.replace('{severity}', f'(?P<severity>{SEVERITY})')})(?![\w-])",
                      re.IGNORECASE)


@lru_cache(maxsize=1)
def _compiled() -> tuple[list[tuple[re.Pattern[str], Finding]], list[tuple[re.Pattern[str], Cue]],
                         list[tuple[re.Pattern[str], str]]]:
    findings = [(_bounded(pattern), finding) for finding in FINDINGS for pattern in finding.patterns]
    cues = [(_bounded(cue.pattern), cue) for cue in CUES]
    rewrites = [(re.compile(pattern, re.IGNORECASE), replacement) for pattern, replacement in REWRITES]
    return findings, cues, rewrites


def _longest_first(matches: list[_Match], taken: list[_Match] | None = None) -> list[_Match]:
    """The matches that overlap no longer one (nor any of ``taken``), in text order."""
    kept = list(taken or [])
    for match in sorted(matches, key=lambda m: (m.start - m.end, m.start)):
        if all(match.end <= other.start or match.start >= other.end for other in kept):
            kept.append(match)
    return sorted((m for m in kept if m not in (taken or [])), key=lambda m: m.start)


def clauses(report: str) -> list[str]:
    """The report rewritten and cut into clauses, whitespace made single spaces."""
    _, _, rewrites = _compiled()
    text = report
    for pattern, replacement in rewrites:
        text = pattern.sub(replacement, text)
    parts = []
    for sentence in _SENTENCE_RE.split(text):
        parts += [" ".join(clause.split()) for clause in _CLAUSE_RE.split(sentence)]
    return [part for part in parts if part]


def _matches(clause: str) -> tuple[list[_Match], list[_Match]]:
    finding_patterns, cue_patterns, _ = _compiled()
    found = _longest_first([_Match(m.start(), m.end(), finding, m.groupdict().get("severity"))
                            for pattern, finding in finding_patterns for m in pattern.finditer(clause)])
    cues = _longest_first([_Match(m.start(), m.end(), cue) for pattern, cue in cue_patterns
                           for m in pattern.finditer(clause)], taken=found)
    return found, cues


def _post_cues(clause: str, found: list[_Match], cues: list[_Match]) -> tuple[dict[int, Cue], set[int]]:
    """Which findings (by index) a post cue covers, and the cues (by index) used so."""
    covered: dict[int, Cue] = {}
    used: set[int] = set()
    for index, cue_match in enumerate(cues):
        cue = cue_match.item
        assert isinstance(cue, Cue)
        before = [i for i, f in enumerate(found) if f.end <= cue_match.start]
        if cue.where not in (POST, BOTH) or not before:
            continue
        last = before[-1]
        gap = clause[found[last].end:cue_match.start]
        if not _POST_GAP_RE.fullmatch(gap) or any(found[last].end <= c.start < cue_match.start for c in cues):
            continue
        used.add(index)
        chain = [last]
        if not _SINGULAR_RE.search(gap):
            while chain[-1] > 0:
                between = clause[found[chain[-1] - 1].end:found[chain[-1]].start]
                # a list ends in a conjunction ("a, b and c have resolved"); "a, b cannot be excluded" is no list
                if not _LIST_GAP_RE.fullmatch(between) or (len(chain) == 1 and not _CONJUNCTION_RE.search(between)):
                    break
                chain.append(chain[-1] - 1)
        for i in chain:
            covered.setdefault(i, cue)
    return covered, used


def _breaks_list(gap: str, first: bool) -> bool:
    """Whether the words between a pre cue (or a listed finding) and the next finding end the cue's list."""
    if _ASSERTION_RE.search(gap):
        return True
    return _SEPARATED_SEVERITY_RE.search(gap) is not None if first else _SEVERITY_RE.search(gap) is not None


def _pre_cue(clause: str, index: int, found: list[_Match], cues: list[_Match], used: set[int]) -> Cue | None:
    """The pre cue whose list reaches finding ``index``, if any: the nearest cue before it decides."""
    target = found[index]
    before = [(i, c) for i, c in enumerate(cues) if c.end <= target.start]
    if not before:
        return None
    cue_index, cue_match = before[-1]
    cue = cue_match.item
    assert isinstance(cue, Cue)
    if cue_index in used or cue.where not in (PRE, BOTH):
        return None
    listed = [f for f in found if cue_match.end <= f.start <= target.start]
    edges = [cue_match.end] + [f.end for f in listed[:-1]]
    for position, (edge, finding) in enumerate(zip(edges, listed)):
        if _breaks_list(clause[edge:finding.start], first=position == 0):
            return None
    return cue


def _window(clause: str, index: int, found: list[_Match], cues: list[_Match]) -> tuple[str, str, str]:
    """A finding's modifier words before it, its own words, its modifier words after it (the module's step 4)."""
    match = found[index]
    left = max([0] + [m.end for m in found + cues if m.end <= match.start])
    separators = [s.end() for s in _SEPARATOR_RE.finditer(clause, left, match.start)]
    left = separators[-1] if separators else left
    right = min([len(clause)] + [m.start for m in found + cues if m.start >= match.end])
    after = _SEPARATOR_RE.search(clause, match.end, right)
    right = after.start() if after else right
    return clause[left:match.start], clause[match.start:match.end], clause[match.end:right]


def _mention(clause: str, index: int, found: list[_Match], cues: list[_Match], cue: Cue | None,
             order: int) -> Mention:
    match = found[index]
    finding = match.item
    assert isinstance(finding, Finding)
    before, own, after = _window(clause, index, found, cues)
    # severity words inside the finding's own name ("clinically significant macular edema") are not its severity
    words = [w.group(0).lower() for w in _SEVERITY_RE.finditer(f"{before} , {after}")]
    words += [match.severity.lower()] if match.severity else []
    sides = frozenset(SIDES[s.group(0).lower()] for s in _SIDE_RE.finditer(f"{before} {own} {after}"))
    lobe = _LOBE_RE.search(f"{before} {own} {after}")
    status = ASSERTED if cue is None or cue.kind == PSEUDO else cue.kind
    return Mention(finding, status, cue.label if status != ASSERTED and cue else None,
                   max((SEVERITY_LEVELS[word] for word in words), default=None), sides,
                   f"{lobe.group(1).lower()} lobe" if lobe else None, order)


def mentions(report: str) -> list[Mention]:
    """Every finding mention of the report, in report order."""
    result: list[Mention] = []
    for clause in clauses(report):
        found, cues = _matches(clause)
        covered, used = _post_cues(clause, found, cues)
        result += [_mention(clause, index, found, cues, covered.get(index) or _pre_cue(clause, index, found, cues, used),
                            len(result) + index) for index in range(len(found))]
    return result
