"""The rule-based recaptioner (issue 21) on the committed report sentences, and its findings notes.

``tests/fixtures/reports.tsv`` holds written report sentences (chest X-ray, diabetic retinopathy, skin lesions;
negations, uncertainty, severity words, laterality, several findings, a report too long for CLIP) and the prompt
each must give; ERROR: the report asserts no finding to simulate.
"""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from mvg_rt.errors import MvgError
from mvg_rt.prompts.compose import recaption_rules
from mvg_rt.prompts.rules import FINDINGS
from mvg_rt.prompts.tokens import token_count, token_limit

TABLE = Path(__file__).parent / "fixtures" / "reports.tsv"


def _rows() -> list[dict[str, str]]:
    lines = [line for line in TABLE.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t", quoting=csv.QUOTE_NONE))


ROWS = _rows()


@pytest.mark.parametrize("row", ROWS, ids=[f"{i + 2}-{row['domain']}-{row['covers'][:30]}" for i, row in enumerate(ROWS)])
def test_each_report_gives_its_expected_prompt(row: dict[str, str]):
    report = row["report"].replace("\\n", "\n")
    if row["expected"] == "ERROR":
        with pytest.raises(MvgError, match="asserts no finding the rule-based recaptioner knows.*--prompt"):
            recaption_rules(report)
        return
    made = recaption_rules(report)
    assert made.prompt == row["expected"]
    assert token_count(made.prompt) <= token_limit()


def test_the_table_covers_every_domain_and_what_the_issue_asks():
    assert len(ROWS) >= 30
    assert {row["domain"] for row in ROWS} >= {"chest", "retina", "skin"}
    covers = " ".join(row["covers"] for row in ROWS)
    for needed in ("negation", "uncertainty", "severity", "laterality", "multiple findings", "too long",
                   "no known finding"):
        assert needed in covers, needed
    assert sum(row["expected"] == "ERROR" for row in ROWS) >= 2


def test_every_domain_finding_of_the_issue_is_known():
    phrases = {finding.phrase for finding in FINDINGS}
    assert {"cardiomegaly", "pleural effusion", "pulmonary edema", "consolidation", "pneumothorax", "atelectasis",
            "pneumonia", "non-proliferative diabetic retinopathy", "proliferative diabetic retinopathy",
            "diabetic macular edema", "melanoma", "melanocytic nevus", "basal cell carcinoma",
            "seborrheic keratosis"} <= phrases


def test_the_notes_say_what_was_kept_and_dropped_and_why():
    made = recaption_rules("Marked cardiomegaly, likely small left effusion. No pneumothorax. Possible pneumonia.")
    assert made.prompt == "severe cardiomegaly with small left pleural effusion"
    assert [(n.phrase, n.kept, n.reason) for n in made.notes] == [
        ("severe cardiomegaly", True, "asserted"),
        ("small left pleural effusion", True, "likely ('likely')"),
        ("pneumothorax", False, "negated ('no')"),
        ("pneumonia", False, "uncertain ('possible')"),
    ]


def test_a_too_long_report_drops_the_least_salient_findings_whole():
    row = next(row for row in ROWS if row["covers"].startswith("too long"))
    made = recaption_rules(row["report"])
    dropped = [n for n in made.notes if not n.kept and n.reason.startswith("least salient")]
    assert [n.finding for n in dropped] == ["lung nodule", "dermatofibroma", "actinic keratosis"]
    assert token_count(made.prompt) <= token_limit()
    longer = made.prompt + " and " + dropped[-1].phrase
    assert token_count(longer) > token_limit()  # the last one dropped did not fit


def test_the_error_names_no_report_words():
    """A report is PHI: the error names the table's findings, never the report's own words."""
    with pytest.raises(MvgError) as caught:
        recaption_rules("Patient ZZTOP-4711 (Jane Doe): no pleural effusion, no pneumothorax.")
    text = str(caught.value)
    assert "pleural effusion, pneumothorax: negated or uncertain" in text
    assert "ZZTOP" not in text and "Jane" not in text and "\n" not in text
