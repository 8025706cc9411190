"""Texts: defaults per language, deployment overrides, and refusal of a broken override."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.texts import DEFAULTS, FIELDS, TextsFileError, load_texts


def test_every_default_template_renders_with_its_fields() -> None:
    for language, templates in DEFAULTS.items():
        assert set(templates) == set(FIELDS), language
        texts = load_texts(language)
        for key, fields in FIELDS.items():
            rendered = texts.render(key, **{name: "X" for name in fields})
            assert rendered.strip(), (language, key)


def test_pt_br_is_default_and_english_available() -> None:
    pt = load_texts()
    en = load_texts("en")
    assert pt.render("line_taken", agent="Maria") == "Maria vai te atender agora. 🙋"
    assert en.render("line_taken", agent="Mary") == "Mary will help you now. 🙋"
    assert pt.ordinal(3) == "3º"
    assert [en.ordinal(n) for n in (1, 2, 3, 4, 11, 12, 13, 21, 22)] == [
        "1st", "2nd", "3rd", "4th", "11th", "12th", "13th", "21st", "22nd",
    ]  # fmt: skip
    assert "sair" in en.leave_words and "leave" in en.leave_words


def test_override_file_flat_keys_and_language_tables(tmp_path: Path) -> None:
    path = tmp_path / "texts.toml"
    path.write_text(
        'goodbye = "Tchau!"\nline_taken = "{agent} chegou."\n[en]\ngoodbye = "Bye!"\n',
        "utf-8",
    )
    pt = load_texts("pt-BR", path)
    assert pt.render("goodbye") == "Tchau!"
    assert pt.render("line_taken", agent="Ana") == "Ana chegou."
    en = load_texts("en", path)
    assert en.render("goodbye") == "Bye!"
    # Flat keys are for the configured language, but a language table wins for its language.
    assert en.render("line_taken", agent="Ann") == "Ann chegou."
    assert load_texts("pt-BR").render("goodbye") != "Tchau!"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('nope = "x"\n', "unknown text"),
        ('line_taken = "{agentt} took you"\n', "unknown field"),
        ('goodbye = "{"\n', "not a valid template"),
        ("goodbye = [\n", "not valid TOML"),
        ('[en]\nnope = "x"\n', "unknown text"),
    ],
)
def test_broken_override_is_refused(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "texts.toml"
    path.write_text(content, "utf-8")
    with pytest.raises(TextsFileError, match=message):
        load_texts("pt-BR", path)


def test_missing_file_and_unknown_language_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TextsFileError, match="cannot read"):
        load_texts("pt-BR", tmp_path / "missing.toml")
    with pytest.raises(TextsFileError, match="unknown language"):
        load_texts("de")
