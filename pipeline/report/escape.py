"""What the pull-request report echoes from a pull request's own files (params keys and values, stage
names, paths, hashes, class names) as inert markdown: a head's params.yaml or dvc.lock must not put
HTML, links, images, mentions or table breaks into the comment."""

from __future__ import annotations

import html
import re

# Markdown's inline punctuation: emphasis, code, links and images, tables, strikethrough, mentions.
_INLINE = re.compile(r"([\\`*_\[\]()!|~@])")


def _one_line(value: object) -> str:
    return " ".join(str(value).splitlines())


def text(value: object) -> str:
    """`value` as literal text, table cells included: markdown punctuation backslash-escaped, HTML as entities."""
    return html.escape(_INLINE.sub(r"\\\1", _one_line(value)), quote=False)


def code(value: object) -> str:
    """`value` as an inline code span (where HTML and links are inert) that nothing in it can close:
    a fence longer than its longest run of backticks; `|` escaped, as a table cell needs."""
    flat = _one_line(value).replace("|", "\\|")
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"
