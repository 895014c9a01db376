"""The rule-based recaptioner's knowledge, as data: findings, severity words, sides, cues, rewrites.

The engine (:mod:`mvg_rt.prompts.extract` and :mod:`mvg_rt.prompts.compose`) has no branch per finding: adding
a finding, a synonym or a cue is a row here. Patterns are regular expressions matched case-insensitively on
whole words (``(?-i:...)`` marks a case-sensitive abbreviation such as ``PDR``), after :data:`REWRITES` turned
spelling variants into one form. A change here that changes any prompt must bump :data:`RULES_VERSION` (run.json
records it) and the expected prompts in ``tests/fixtures/reports.tsv``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RULES_VERSION = "rules v1"

# Severity words -> level (1 mild/small .. 4 massive). Several in one finding's window: the strongest counts
# (``mild to moderate`` is moderate). ``marked``, ``significant``, ``extensive`` are severe; ``large`` is level 3.
SEVERITY_LEVELS: dict[str, int] = {
    **dict.fromkeys(("mild", "mildly", "minimal", "minimally", "slight", "slightly", "trace", "tiny", "small",
                     "subtle", "minor", "borderline", "early", "faint", "little"), 1),
    **dict.fromkeys(("moderate", "moderately", "moderate-sized", "medium", "medium-sized", "intermediate"), 2),
    **dict.fromkeys(("severe", "severely", "marked", "markedly", "large", "significant", "significantly",
                     "extensive", "extensively", "advanced", "gross", "grossly", "pronounced", "substantial",
                     "considerable", "sizeable", "sizable", "big", "very severe"), 3),
    **dict.fromkeys(("massive", "massively", "huge", "giant", "enormous", "very large"), 4),
}

# How a level is said, per kind of finding: an effusion is small..massive, cardiomegaly mild..severe.
SCALES: dict[str, dict[int, str]] = {
    "degree": {1: "mild", 2: "moderate", 3: "severe", 4: "massive"},
    "size": {1: "small", 2: "moderate", 3: "large", 4: "massive"},
}

UNGRADED_LEVEL = 2  # the salience of a finding without a severity word (as moderate), unless its row says

# Side words -> side; a finding whose window names left and right is bilateral.
SIDES: dict[str, str] = {
    "left": "left", "left-sided": "left", "right": "right", "right-sided": "right", "bilateral": "bilateral",
    "bilaterally": "bilateral", "bibasilar": "bilateral", "bibasal": "bilateral", "bibasally": "bilateral",
}
LOBE = r"(upper|middle|lower) lobes?"  # kept for lobar findings: "right lower lobe consolidation"


@dataclass(frozen=True)
class Finding:
    """One finding the rules know: what the prompt says, how the report may say it, which modifiers it keeps."""

    phrase: str  # the prompt's words, e.g. "pleural effusion"
    domain: str  # chest x-ray, diabetic retinopathy, skin lesion
    patterns: tuple[str, ...]  # regexes; {severity} is a severity word (a named group)
    scale: str | None = None  # a key of SCALES: severity words kept; None: ignored (a lesion type, a top grade)
    sided: bool = False  # left / right / bilateral kept
    lobar: bool = False  # upper / middle / lower lobe kept
    plural: str | None = None  # the phrase when bilateral ("pleural effusions")
    level: int = UNGRADED_LEVEL  # salience without a severity word


CHEST, RETINA, SKIN = "chest x-ray", "diabetic retinopathy", "skin lesion"
_LUNG = {"scale": "degree", "sided": True, "lobar": True}

FINDINGS: tuple[Finding, ...] = (
    # chest X-ray (the CheXpert / MIMIC-CXR findings the paper's chest domain simulates)
    Finding("cardiomegaly", CHEST, (r"cardiomegaly", r"enlarged (?:heart|cardiac silhouette|cardiac shadow)",
                                    r"cardiac enlargement", r"enlargement of the (?:heart|cardiac silhouette)",
                                    r"(?:heart|heart size|cardiac silhouette|cardiac shadow) (?:is|appears|remains) "
                                    r"(?:{severity} )?enlarged"), scale="degree"),
    Finding("pleural effusion", CHEST, (r"(?<!pericardial )(?<!joint )(?:pleural )?effusions?", r"pleural fluid",
                                        r"hydrothorax"), scale="size", sided=True, plural="pleural effusions"),
    Finding("pulmonary edema", CHEST, (r"(?:pulmonary|interstitial|alveolar|airspace) edema",
                                       r"edema (?:of|in) the lungs"), scale="degree"),
    Finding("consolidation", CHEST, (r"consolidations?", r"consolidative opacit(?:y|ies)"), **_LUNG),
    Finding("pneumothorax", CHEST, (r"pneumothora(?:x|ces)", r"(?-i:PTX)"), scale="size", sided=True,
            plural="pneumothoraces"),
    Finding("atelectasis", CHEST, (r"atelecta(?:sis|ses|tic changes?)", r"(?:lobar|segmental) collapse",
                                   r"collapse of the (?:left |right )?(?:upper|middle|lower) lobe"), **_LUNG),
    Finding("pneumonia", CHEST, (r"(?:broncho)?pneumonias?", r"pneumonic (?:infiltrates?|changes?|consolidation)"),
            **_LUNG),
    Finding("lung nodule", CHEST, (r"(?:pulmonary|lung) nodules?",), scale="size", sided=True, lobar=True,
            plural="lung nodules"),
    # diabetic retinopathy: the ICDR grades, diabetic macular edema, the lesions that grade them
    Finding("non-proliferative diabetic retinopathy", RETINA,
            (r"non[- ]?proliferative (?:diabetic )?retinopathy", r"non[- ]?proliferative DR", r"(?-i:NPDR)"),
            scale="degree"),
    Finding("proliferative diabetic retinopathy", RETINA,
            (r"proliferative (?:diabetic )?retinopathy", r"proliferative DR", r"(?-i:PDR)"), level=4),
    Finding("diabetic retinopathy", RETINA, (r"diabetic retinopathy", r"(?-i:DR)"), scale="degree"),
    Finding("diabetic macular edema", RETINA,
            (r"(?:diabetic |cystoid |clinically significant |center[- ]involving |centre[- ]involving )?"
             r"macular edema", r"(?-i:DME|DMO|CSME|CME)"), scale="degree"),
    # the lesions come after the grade they make (salience 1: "mild NPDR with microaneurysms")
    Finding("microaneurysms", RETINA, (r"micro-?aneurysms?",), level=1),
    Finding("retinal hemorrhages", RETINA, (r"(?:intra)?retinal hemorrhages?", r"dot[- ]and[- ]blot hemorrhages?",
                                            r"flame[- ]shaped hemorrhages?"), level=1),
    Finding("hard exudates", RETINA, (r"hard exudates?",), level=1),
    Finding("cotton wool spots", RETINA, (r"cotton[- ]wool spots?",), level=1),
    Finding("neovascularization", RETINA, (r"neovasculari[sz]ation(?: (?:of|at) the (?:disc|retina))?",
                                           r"(?-i:NVD|NVE)"), level=1),
    # skin lesions: the ISIC / HAM10000 classes
    Finding("melanoma", SKIN, (r"(?:malignant |invasive |nodular |superficial spreading )?melanomas?",
                               r"melanoma in situ")),
    Finding("melanocytic nevus", SKIN, (r"(?:benign |melanocytic |compound |junctional |intradermal |congenital )?"
                                        r"nev(?:us|i)", r"moles?")),
    Finding("dysplastic nevus", SKIN, (r"(?:dysplastic|atypical|clark) nev(?:us|i)",)),
    Finding("basal cell carcinoma", SKIN, (r"basal cell carcinomas?", r"basal cell epithelioma", r"rodent ulcer",
                                           r"(?-i:BCC)")),
    Finding("squamous cell carcinoma", SKIN, (r"(?:cutaneous )?squamous cell carcinomas?", r"(?-i:c?SCC)")),
    Finding("seborrheic keratosis", SKIN, (r"seborrheic keratos(?:is|es)",)),
    Finding("actinic keratosis", SKIN, (r"(?:actinic|solar) keratos(?:is|es)",)),
    Finding("benign keratosis", SKIN, (r"benign (?:lichenoid )?keratos(?:is|es)", r"lichen planus-like keratosis",
                                       r"solar lentig(?:o|ines)")),
    Finding("dermatofibroma", SKIN, (r"dermatofibromas?", r"benign fibrous histiocytoma")),
    Finding("vascular lesion", SKIN, (r"(?:cherry )?hemangiomas?", r"angiokeratomas?", r"pyogenic granulomas?",
                                      r"vascular lesions?")),
)

# Spelling variants and fixed phrasings, rewritten before matching (pattern, replacement).
REWRITES: tuple[tuple[str, str], ...] = (
    (r"oedema", "edema"), (r"haem", "hem"), (r"naev", "nev"), (r"seborrhoeic", "seborrheic"),
    (r"visualised", "visualized"), (r"favour", "favor"), (r"can't|can not", "cannot"), (r"\bw/o\b", "without"),
    (r"\br/o\b", "rule out"), (r"(\w)-to-(\w)", r"\1 to \2"), (r"\?", " ? "),
    (r"\b(?:left and right|right and left|both sides|both lungs|both bases)\b", "bilateral"),
    (r"\bbackground (?:diabetic )?retinopathy\b", "mild non-proliferative diabetic retinopathy"),  # UK grade R1
    (r"\bpre-?proliferative (?:diabetic )?retinopathy\b", "severe non-proliferative diabetic retinopathy"),  # R2
    (r"\bblunting of the (left |right |bilateral )?costophrenic angles?\b", r"small \1pleural effusion"),
    (r"(?-i:\bRUL\b)", "right upper lobe"), (r"(?-i:\bRML\b)", "right middle lobe"),
    (r"(?-i:\bRLL\b)", "right lower lobe"), (r"(?-i:\bLUL\b)", "left upper lobe"),
    (r"(?-i:\bLLL\b)", "left lower lobe"),
)

NEGATED, UNCERTAIN, LIKELY, PSEUDO = "negated", "uncertain", "likely", "pseudo"
PRE, POST, BOTH = "pre", "post", "both"


@dataclass(frozen=True)
class Cue:
    """A phrase that changes what the findings next to it mean.

    ``kind``: negated and uncertain findings are dropped, likely ones kept; a pseudo cue means nothing and
    only keeps a shorter cue from matching inside it (``no change`` is not ``no``). ``where``: a pre cue
    covers the findings after it in its clause (a list of them, ``no effusion or pneumothorax``), a post cue
    the finding just before it (and a list before that, unless its verb is singular: ``is``, ``was``, ``has``).
    """

    pattern: str
    kind: str
    where: str
    label: str  # how the findings list names it (the table's words, never the report's)


def _label(pattern: str) -> str:
    """A cue's pattern in words: optional groups left out, the first alternative of a group, ``\\?`` as ``?``."""
    text = re.sub(r"\(\?:[^()]*\)\?", "", pattern)
    text = re.sub(r"\(\?:([^()|]*)[^()]*\)", r"\1", text)
    return " ".join(re.sub(r"(\w)\?", r"\1", text).replace("\\?", "?").split())


def _cues(kind: str, where: str, *patterns: str) -> tuple[Cue, ...]:
    return tuple(Cue(pattern, kind, where, _label(pattern)) for pattern in patterns)


_NOT_SEEN = r"not (?:seen|identified|present|visualized|demonstrated|evident|appreciated|detected|visible)"

CUES: tuple[Cue, ...] = (
    *_cues(NEGATED, PRE, r"no", r"not", r"without", r"negative for", r"free of", r"absence of", r"neither", r"nor",
           r"resolution of", r"no evidence of", r"no signs? of"),
    *_cues(NEGATED, BOTH, r"resolved", r"absent", r"cleared", r"ruled out"),
    *_cues(NEGATED, POST, r"excluded", _NOT_SEEN, r"no longer (?:seen|present|visible|evident)"),
    *_cues(UNCERTAIN, PRE, r"possible", r"possibly", r"may (?:be|represent)", r"might (?:be|represent)",
           r"could (?:be|represent)", r"questionable", r"question of", r"cannot exclude", r"cannot rule out",
           r"(?:to )?rule out", r"evaluat(?:e|ion) for", r"equivocal", r"uncertain", r"indeterminate",
           r"differential (?:diagnosis )?includes?"),
    *_cues(UNCERTAIN, BOTH, r"\?"),
    *_cues(UNCERTAIN, POST, r"cannot be (?:excluded|ruled out)", r"not (?:entirely )?(?:excluded|ruled out)",
           r"questioned", r"is possible"),
    *_cues(LIKELY, PRE, r"(?:most )?likely", r"probable", r"probably", r"suspected", r"suspicious for",
           r"suspicion of", r"consistent with", r"suggestive of", r"suggesting", r"suggests", r"compatible with",
           r"concerning for", r"concern for", r"in keeping with", r"presumed", r"presumably", r"favor(?:ing)?",
           r"representing", r"worrisome for", r"indicative of"),
    *_cues(LIKELY, POST, r"favored", r"is (?:likely|probable|suspected)"),
    *_cues(PSEUDO, PRE, r"no (?:significant |interval )?change", r"no (?:increase|decrease|improvement|worsening)",
           r"not only", r"no further", r"without (?:change|improvement)", r"not (?:yet )?(?:resolved|cleared)"),
)

# What ends a clause: no cue reaches past it.
CLAUSE_BREAKS = r"\b(?:but|however|although|though|whereas|yet|except|apart from|aside from|other than|otherwise)\b"
# Words that assert something new: a pre cue's list stops at them ("no effusion, there is cardiomegaly").
ASSERTIONS = (r"\b(?:there (?:is|are)|with|shows?|showing|demonstrates?|demonstrating|present|seen|noted|new|"
              r"increased|increasing|worsened|worsening|developing|developed|persistent|persists|remains?|stable|"
              r"unchanged|also)\b")
# Between a finding and its post cue: only these words ("the effusion on the left has now resolved").
POST_GAP_WORDS = ("is", "are", "was", "were", "has", "have", "had", "been", "be", "now", "completely", "fully",
                  "entirely", "since", "also", "then", "all", "both", "largely", "essentially", "on", "in", "the")
SINGULAR_VERBS = ("is", "was", "has")  # a post cue after one of these covers the one finding before it
# Between two findings of one list: connectors (and the next finding's own side, lobe and severity words).
LIST_WORDS = ("and", "or", "nor", "the", "a", "an", "any", "as well as", "/", "&")
SEPARATORS = r",|/|\b(?:and|or|with)\b"  # where a finding's own modifier words end
