"""The docs cannot drift from the code: the generated tables name every field the code validates and writes,
every page is in the navigation, and the README stays a front page."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from adaptbench.cli.reference import record_reference, settings_reference
from adaptbench.config.blocks import BLOCKS
from adaptbench.methods import METHODS
from adaptbench.store.record import Phase, RunRecord

ROOT = Path(__file__).resolve().parent.parent


def test_the_settings_reference_names_every_field_of_every_block():
    text = settings_reference()
    for name in BLOCKS.names():
        for field, info in BLOCKS[name].settings.model_fields.items():
            assert f"`{name}.{info.alias or field}`" in text, (name, field)
    assert "`model.dtype`" in text and "`runtime.batch_size`" in text and "`eval.max_examples`" in text


def test_the_record_reference_names_every_field_of_the_record_and_of_each_methods_info():
    text = record_reference()
    for field in [*RunRecord.model_fields, *Phase.model_fields]:
        assert f"`{field}`" in text, field
    for name in METHODS.names():
        for field in METHODS[name].info.model_fields:
            assert f"`{field}`" in text, (name, field)


def test_every_docs_page_is_in_the_navigation_and_the_markers_are_in_place():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", "#"))
    listed = set(re.findall(r"[\w/.-]+\.md", str(config["nav"])))
    pages = {str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")}
    assert pages == listed
    assert "<!-- generated: settings -->" in (ROOT / "docs/reference/settings.md").read_text()
    assert "<!-- generated: record -->" in (ROOT / "docs/results.md").read_text()


def test_the_readme_is_a_front_page():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    for target in re.findall(r"\]\((docs/[^)#]+)", text):
        assert (ROOT / target).exists(), target
