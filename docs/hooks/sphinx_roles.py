"""MkDocs hook: show the Sphinx roles of medadapt's docstrings as plain code.

The docstrings write cross-references the reST way (``:class:`Segmenter```,
``:func:`medadapt.io.load_image```); mkdocstrings renders them as the role's
name followed by inline code. This hook drops the role name, leaving the code.
"""

from __future__ import annotations

import re

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj|const|term|ref):(?=<code>)")


def on_page_content(html: str, **kwargs) -> str:
    return _ROLE.sub("", html)
