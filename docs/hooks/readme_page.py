"""mkdocs hook: the repository's README.md as the site page ``readme.md``, so that the site
links the README (its links into ``docs/`` are rewritten to the site's pages; any other link
of the README must then exist in the site too, which ``mkdocs build --strict`` checks)."""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, Files

README = Path(__file__).resolve().parents[2] / "README.md"
DOCS_LINK = re.compile(r"\]\(docs/")


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "readme.md", content=DOCS_LINK.sub("](", README.read_text())))
    return files
