"""MkDocs hook: the settings reference and the record schema, generated from the code at build time
(``adaptbench/cli/reference.py``), replace their markers in the pages."""

from adaptbench.cli.reference import record_reference, settings_reference

MARKERS = {"<!-- generated: settings -->": settings_reference, "<!-- generated: record -->": record_reference}


def on_page_markdown(markdown, page, config, files):
    for marker, make in MARKERS.items():
        if marker in markdown:
            markdown = markdown.replace(marker, make())
    return markdown
