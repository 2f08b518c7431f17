"""Reading source material: sentences, headings as structure, markup and non-prose dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from coursegen.course.text import clean_inline, parse_document, split_sentences, stem

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.mark.parametrize(
    ("paragraph", "sentences"),
    [
        (
            "Bees dance. Others follow! Do they learn? Yes.",
            ["Bees dance.", "Others follow!", "Do they learn?", "Yes."],
        ),
        (
            "Some crops, e.g. apples and almonds, need bees. Dr. Smith agrees.",
            ["Some crops, e.g. apples and almonds, need bees.", "Dr. Smith agrees."],
        ),
        ("J. R. R. Tolkien wrote it in 1937. Pi is about 3.14 here.", None),
        ('He said "stop." Then he left.', ['He said "stop."', "Then he left."]),
        ("Names are bound (see below). the lower-case start continues it", None),
        ("No final stop at the end", ["No final stop at the end"]),
    ],
)
def test_sentences(paragraph: str, sentences: list[str] | None) -> None:
    got = split_sentences(paragraph)
    if sentences is None:  # initials, decimals and lower-case starts do not end sentences
        expected = [s for s in paragraph.split(". ") if s]
        assert len(got) == (2 if "Pi is" in paragraph else 1), got
        assert " ".join(got) == paragraph, expected
    else:
        assert got == sentences


def test_markdown_headings_give_the_structure_and_the_title() -> None:
    doc = parse_document((DATA / "printing-press.md").read_text(encoding="utf-8"), title="")
    assert doc.title == doc.heading_title == "The Printing Press"
    paths = [section.path for section in doc.sections]
    assert paths[0] == ()  # the introduction, before the first H2
    assert ("Gutenberg's invention", "Movable metal type") in paths
    assert ("Consequences of print",) in paths
    assert all("The Printing Press" not in path for path in paths)  # the title is no section
    consequences = next(s for s in doc.sections if s.path == ("Consequences of print",))
    # each list item is a paragraph of its own
    assert any(p.startswith("When Martin Luther published") for p in consequences.paragraphs)
    assert sum(s.words for s in doc.sections) == doc.words > 850


def test_rest_underlined_headings_footnotes_and_code_examples() -> None:
    doc = parse_document((DATA / "python-execution-model.txt").read_text(encoding="utf-8"), title="execmodel")
    assert doc.heading_title == "Execution model"
    assert doc.title == "execmodel"  # the given title wins
    assert [s.path for s in doc.sections] == [
        ("Structure of a program",),
        ("Naming and binding", "Binding of names"),
        ("Naming and binding", "Resolution of names"),
        ("Naming and binding", "Builtins and restricted execution"),
        ("Naming and binding", "Interaction with dynamic features"),
        ("Exceptions",),
    ]
    text = " ".join(p for s in doc.sections for p in s.paragraphs)
    assert "This limitation occurs" not in text  # the footnote block
    assert "b = list(a + i for i in range(10))" not in text  # an indented code example
    assert "A block is a piece of Python program text" in text  # from "A *block* is ..."
    assert 'import *" binds all names' in text  # a literal star stays
    assert "Exception messages are not part of the Python API." in text  # an indented note stays


def test_plain_text_has_one_section_without_path() -> None:
    doc = parse_document((DATA / "honeybees.txt").read_text(encoding="utf-8"), title="Bees")
    assert (doc.title, doc.heading_title, doc.has_headings) == ("Bees", None, False)
    assert [s.path for s in doc.sections] == [()]
    assert len(doc.sections[0].paragraphs) == 8  # paragraphs joined across hard-wrapped lines


def test_setext_headings_fences_tables_and_inline_markup() -> None:
    text = """Bees
====

Intro with **bold**, *emphasis*, `code`, a [link](https://example.org) and ![img](x.png).

Hives
-----

```python
print("not prose")
```

| a | b |
|---|---|

>>> 1 + 1

A hive holds <b>wax</b> &amp; honey.[1]
"""
    doc = parse_document(text)
    assert doc.heading_title == "Bees"
    assert [s.path for s in doc.sections] == [(), ("Hives",)]
    assert doc.sections[0].paragraphs == ("Intro with bold, emphasis, code, a link and .",)
    assert doc.sections[1].paragraphs == ("A hive holds wax & honey.",)


def test_clean_inline_keeps_plain_text() -> None:
    assert clean_inline("  a  plain\nline  ") == "a plain line"
    assert clean_inline("snake_case and 2*3*4 stay") == "snake_case and 2*3*4 stay"


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("Bees", "bee"),
        ("colonies", "colony"),
        ("presses", "press"),
        ("species", "species"),
        ("Gutenberg's", "gutenberg"),
    ],
)
def test_stem_folds_plurals_and_possessives(word: str, expected: str) -> None:
    assert stem(word) == expected
