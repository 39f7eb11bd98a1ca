"""Text for plotly figures: every user-supplied string goes through `plot_text`.

Plotly renders a subset of HTML in trace names, legends, hover text, axis titles, tick
labels and annotations (``<a href>``, ``<b>``, ``<span style>``, ``<br>``). Titles,
artists, media and collection names come from metadata files and IIIF manifests written
by others, so a figure shows them as text, never as markup: ``<``, ``>``, ``&`` and
quotes become entities, which plotly displays literally. Markup we add ourselves (the
``<br>`` joining hover lines) is added after escaping.
"""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


def plot_text(value: Any) -> str:
    """``value`` as plain text for a plotly figure (HTML special characters escaped)."""
    return html.escape(str(value))


def plot_lines(values: Iterable[Any]) -> str:
    """Non-empty values, each escaped, one per line (plotly's ``<br>``)."""
    return "<br>".join(plot_text(v) for v in values if v)
