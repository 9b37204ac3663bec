"""The pages speak one language at a time: every string in both tables, and the engine's
texts translated on the control-room page (issue 17).

The tables are read from the JavaScript itself (``key: "value"`` pairs, one object per
language), so a key added in one language only, a value left in the other language, or
an engine text that changed its words fails here. The browser tests check the pages.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dispatch.web import STATIC_DIR

DISPATCH = Path(__file__).resolve().parents[2] / "dispatch"
_PAIR = re.compile(r'(\w+): "((?:[^"\\]|\\.)*)"')
_CJK = re.compile(r"[\u3400-\u9fff\uff00-\uffef\u3000-\u303f]")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")

# Values with no Chinese, or the same in both languages, on purpose: "P50", "{a}/{b}".
_NEUTRAL = {"shown_of"}


def _tables(page: str) -> dict[str, dict[str, str]]:
    name = {"control-room": "app.js", "volunteer": "volunteer.js", "report": "report.js"}[page]
    js = (STATIC_DIR / name).read_text("utf-8")
    js = re.sub(r"^\s*//.*$", "", js, flags=re.MULTILINE)
    start = js.index("zh: {")
    middle = js.index("\n    en: {", start)
    end = js.index("\n  };", middle)
    out = {}
    for lang, block in (("zh", js[start:middle]), ("en", js[middle:end])):
        pairs = _PAIR.findall(block)
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), f"{page} {lang}: a key twice"
        out[lang] = dict(pairs)
    return out


@pytest.mark.parametrize("page", ["control-room", "volunteer", "report"])
def test_both_languages_have_the_same_strings(page: str) -> None:
    tables = _tables(page)
    zh, en = tables["zh"], tables["en"]
    assert len(zh) > 50
    assert set(zh) == set(en), {"only zh": set(zh) - set(en), "only en": set(en) - set(zh)}
    for key in zh:
        assert set(_PLACEHOLDER.findall(zh[key])) == set(_PLACEHOLDER.findall(en[key])), key


@pytest.mark.parametrize("page", ["control-room", "volunteer", "report"])
def test_no_string_is_left_in_the_other_language(page: str) -> None:
    tables = _tables(page)
    zh, en = tables["zh"], tables["en"]
    english_in_zh = [k for k, v in zh.items() if not _CJK.search(_PLACEHOLDER.sub("", v))]
    chinese_in_en = [k for k, v in en.items() if _CJK.search(v)]
    same = [k for k in zh if zh[k] == en[k] and k not in _NEUTRAL]
    english_in_zh = [k for k in english_in_zh if k not in _NEUTRAL]
    assert english_in_zh == [], [(k, zh[k]) for k in english_in_zh]
    assert chinese_in_en == [], [(k, en[k]) for k in chinese_in_en]
    assert same == [], [(k, zh[k]) for k in same]


# The engine's texts that reach operators, as dispatch/ words them, each with the part of
# the source that makes it: a text that changes there must change on the page too.
ENGINE_SAMPLES = [
    (
        "the fastest volunteer needs about 240 s and 35 s are gone or needed to set off: "
        "more than the 180 s target",
        "f\"the fastest volunteer needs about {p['best']} s and {p['used']} s are \"",
    ),
    (
        "no available volunteer with first_aid, patrol who could be there within 600 s "
        "(3000 m at most)",
        'f"no available volunteer with {skills} who could be there within "',
    ),
    (
        "no available volunteer with no particular skills who could be there within 600 s "
        "(3000 m at most)",
        '"no particular skills"',
    ),
    ("no available volunteer with mediation within 3000 m", 'f"no available volunteer with {'),
    ("the alert budget (12) is spent and nobody accepted", 'f"the alert budget ({'),
    ("nobody accepted after 3 waves", "f\"nobody accepted after {p['n']} waves\""),
    (
        "responders overdue, and nobody else accepted after 4 waves",
        "f\"responders overdue, and nobody else accepted after {p['n']} waves\"",
    ),
    (
        "every alerted volunteer declined or timed out, and nobody else is in reach",
        '"every alerted volunteer declined or timed out, and nobody else is in reach"',
    ),
    ("escalated by 值班员 陈", "f\"escalated by {p['by']}\""),
    ("resolved by 值班员 陈", 'f"{state.value} by {by}"'),
    ("cancelled by operator", 'f"{state.value} by {by}"'),
    ("alert expired", '"alert expired"'),
    ("you declined this alert", '"you declined this alert"'),
    ("filled by others", '"filled by others"'),
    ("already committed to another incident", '"already committed to another incident"'),
    ("a faster responder is going", '"a faster responder is going"'),
    ("a faster responder is going; you go on as a backup", "a faster responder is going; you go"),
    ("you are now the primary responder", '"you are now the primary responder"'),
    ("enough responders on scene", '"enough responders on scene"'),
    ("assigned elsewhere by the control room", '"assigned elsewhere by the control room"'),
    ("no longer needed", '"no longer needed"'),
    ("incident resolved", 'f"incident {'),
    ("assigned by operator", '"assigned by operator"'),
    ("confirmed", '"confirmed"'),
    # duplicate reports
    ("merged into i20261204-1a2b by 值班员 陈", 'f"merged into {into} by {by}"'),
    (
        "incident merged into another report of the same event",
        '"incident merged into another report of the same event"',
    ),
]


def _engine_patterns() -> list[tuple[re.Pattern[str], str, int]]:
    js = (STATIC_DIR / "app.js").read_text("utf-8")
    block = js[js.index("// ENGINE_TEXTS begin") : js.index("// ENGINE_TEXTS end")]
    out = []
    for source, key, names in re.findall(r'\[/(.+?)/, "(\w+)", \[([^\]]*)\]\]', block):
        out.append((re.compile(source), key, len(re.findall(r'"\w+"', names))))
    assert len(out) >= 20
    return out


@pytest.mark.parametrize(("text", "source"), ENGINE_SAMPLES)
def test_the_page_translates_each_engine_text(text: str, source: str) -> None:
    code = "\n".join(p.read_text("utf-8") for p in sorted(DISPATCH.glob("*.py")))
    assert source in code, f"the engine no longer says {source!r}: update app.js ENGINE_TEXTS"
    tables = _tables("control-room")
    match = next(((p, k, n) for p, k, n in _engine_patterns() if p.search(text)), None)
    assert match is not None, f"no ENGINE_TEXTS pattern for {text!r}"
    pattern, key, names = match
    assert pattern.groups == names, key
    assert key in tables["zh"], key
    assert key in tables["en"], key
