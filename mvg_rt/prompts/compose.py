"""The rule-based recaptioner: a report's asserted findings, merged, ordered by salience, said in CLIP's budget.

- Kept: asserted and likely findings (``likely``, ``consistent with``, ... keep a finding, without a qualifier:
  a report of the expected terminal state that calls a finding likely expects it). Dropped: negated ones
  and uncertain ones (``possible``, ``cannot exclude``, ``?``): the video should not show what the report
  does not expect.
- One finding said twice is one: its strongest severity, its sides together (left and right: bilateral).
- Salience: the strongest severity first (a finding without a severity word counts as moderate, except where
  its row says, e.g. proliferative diabetic retinopathy, the top grade), then the first mentioned.
- The prompt: the primary finding, then ``with`` the others (``severe cardiomegaly with moderate left pleural
  effusion and mild pulmonary edema``). Over CLIP's 77 tokens, the least salient findings are dropped whole
  until it fits: a phrase is never cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from mvg_rt.errors import MvgError
from mvg_rt.prompts.extract import ASSERTED, Mention, mentions
from mvg_rt.prompts.rules import LIKELY, SCALES, Finding
from mvg_rt.prompts.tokens import token_count, token_limit

NO_FINDING_FIX = ("write the prompt yourself (--prompt TEXT, or the worklist's prompt column); the README's "
                  "'Prompts from clinical reports' lists the findings the rules know")


@dataclass(frozen=True)
class FindingNote:
    """What became of one finding: the table's words and why it was kept or dropped (never the report's words)."""

    finding: str
    phrase: str  # as the prompt says (or would say) it
    kept: bool
    reason: str  # asserted; likely ('consistent with'); negated ('no'); uncertain ('possible'); over CLIP's ...


@dataclass(frozen=True)
class Recaption:
    prompt: str
    notes: tuple[FindingNote, ...]  # kept ones in prompt order, then the dropped ones in report order


def _side(sides: frozenset[str]) -> str | None:
    if "bilateral" in sides or {"left", "right"} <= sides:
        return "bilateral"
    return next(iter(sides), None)


def phrase(finding: Finding, level: int | None, sides: frozenset[str], lobe: str | None) -> str:
    """A finding in the prompt's words: severity, side, lobe, name (each only where its row keeps it)."""
    side = _side(sides) if finding.sided else None
    words = [SCALES[finding.scale][level] if finding.scale and level else None, side,
             lobe if finding.lobar else None,
             finding.plural if side == "bilateral" and finding.plural else finding.phrase]
    return " ".join(word for word in words if word)


def join(phrases: list[str]) -> str:
    """``a``; ``a with b``; ``a with b, c and d``."""
    if len(phrases) < 2:
        return "".join(phrases)
    rest = phrases[1:]
    listed = rest[0] if len(rest) == 1 else f"{', '.join(rest[:-1])} and {rest[-1]}"
    return f"{phrases[0]} with {listed}"


@dataclass
class _Kept:
    """A finding's asserted mentions, merged."""

    first: Mention
    level: int | None
    sides: frozenset[str]
    lobe: str | None
    likely_only: bool

    def add(self, mention: Mention) -> None:
        self.level = max(filter(None, (self.level, mention.level)), default=None)
        self.sides |= mention.sides
        self.lobe = self.lobe or mention.lobe
        self.likely_only = self.likely_only and mention.status == LIKELY

    @property
    def salience(self) -> int:
        finding = self.first.finding
        return self.level if finding.scale and self.level else finding.level

    @property
    def phrase(self) -> str:
        return phrase(self.first.finding, self.level, self.sides, self.lobe)

    @property
    def reason(self) -> str:
        return f"likely ('{self.first.cue}')" if self.likely_only else ASSERTED


def _dropped(mention: Mention) -> FindingNote:
    return FindingNote(mention.finding.phrase, phrase(mention.finding, mention.level, mention.sides, mention.lobe),
                       False, f"{mention.status} ('{mention.cue}')")


def recaption_rules(report: str) -> Recaption:
    """The prompt the rules make of ``report``; a one-line :class:`MvgError` when it asserts no finding they know."""
    found = mentions(report)
    kept: dict[str, _Kept] = {}
    for mention in found:
        if mention.status not in (ASSERTED, LIKELY):
            continue
        if mention.finding.phrase in kept:
            kept[mention.finding.phrase].add(mention)
        else:
            kept[mention.finding.phrase] = _Kept(mention, mention.level, mention.sides, mention.lobe,
                                                 mention.status == LIKELY)
    dropped = list(dict.fromkeys(_dropped(m) for m in found if m.status not in (ASSERTED, LIKELY)))
    if not kept:
        named = ", ".join(dict.fromkeys(note.finding for note in dropped))
        detail = f" ({named}: negated or uncertain)" if named else ""
        raise MvgError(f"the report asserts no finding the rule-based recaptioner knows{detail}: {NO_FINDING_FIX}")
    ordered = sorted(kept.values(), key=lambda k: (-k.salience, k.first.order))
    while len(ordered) > 1 and token_count(join([k.phrase for k in ordered])) > token_limit():
        least = ordered.pop()
        dropped.append(FindingNote(least.first.finding.phrase, least.phrase, False,
                                   f"least salient: over CLIP's {token_limit()} tokens"))
    notes = [FindingNote(k.first.finding.phrase, k.phrase, True, k.reason) for k in ordered]
    return Recaption(join([k.phrase for k in ordered]), tuple(notes + dropped))
