"""The README's dead-letter reason list and :class:`tilepipe.reasons.Reason` are one list.

The README is what operators alert and filter on; the enum is what the code
emits. Both directions are checked: a code the README names that nothing can
emit is a stale promise, a code the code emits that the README omits is an
undocumented one.
"""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from tilepipe.reasons import Reason
from tilepipe.records import DeadLetter

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_reasons() -> set[str]:
    """The backticked codes of the "Reasons:" paragraph under "Dead letters"."""
    text = README.read_text(encoding="utf-8")
    start = text.index("\nReasons: ")
    end = text.index("\n\n", start)
    return set(re.findall(r"`([a-z_]+)`", text[start:end]))


def test_every_reason_the_code_emits_is_in_the_readme() -> None:
    missing = {r.value for r in Reason} - readme_reasons()
    assert not missing, f"add these to README.md's dead-letter 'Reasons:' list: {sorted(missing)}"


def test_every_reason_the_readme_lists_is_one_the_code_emits() -> None:
    stale = readme_reasons() - {r.value for r in Reason}
    assert not stale, f"README.md lists reasons tilepipe/reasons.py does not name: {sorted(stale)}"


def test_a_reason_is_its_bare_code_on_the_wire_and_in_labels() -> None:
    letter = DeadLetter(Reason.TOO_LARGE, "big", b"x", {"file": "f", "line": 1}, 0.0)
    doc = letter.to_json_dict(1024)
    assert orjson.loads(orjson.dumps(doc))["reason"] == "too_large"
    assert str(Reason.TOO_LARGE) == f"{Reason.TOO_LARGE}" == "too_large"
    assert Reason("too_large") is Reason.TOO_LARGE
