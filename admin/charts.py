"""Small server-side SVG charts for the dashboard: no JavaScript, no CDN, nothing to vendor.

Each function returns an inline <svg> as Markup; labels are escaped.
"""

from __future__ import annotations

from collections.abc import Sequence

from markupsafe import Markup, escape

BLUE = "#337ab7"
RED = "#d9534f"
ORANGE = "#f0ad4e"
GREEN = "#5cb85c"
GREY = "#999"


def _svg(width: int, height: int, body: str, title: str) -> Markup:
    return Markup(f'<svg viewBox="0 0 {width} {height}" width="100%" role="img" '
                  f'xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">'
                  f"<title>{escape(title)}</title>{body}</svg>")


def column_chart(points: Sequence[tuple[str, int]], *, title: str, width: int = 600, height: int = 220,
                 every: int = 10) -> Markup:
    """Vertical bars over time (e.g. heartbeats per minute); every `every`-th label is drawn."""
    if not points:
        return empty(title)
    left, bottom, top = 44, 22, 10
    plot_w, plot_h = width - left - 6, height - bottom - top
    peak = max(v for _, v in points) or 1
    bar_w = plot_w / len(points)
    parts = [f'<line x1="{left}" y1="{top + plot_h}" x2="{width - 6}" y2="{top + plot_h}" stroke="{GREY}"/>',
             f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{peak}</text>',
             f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>']
    for i, (label, value) in enumerate(points):
        h = plot_h * value / peak
        x = left + i * bar_w
        parts.append(f'<rect x="{x + 0.5:.1f}" y="{top + plot_h - h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
                     f'height="{h:.1f}" fill="{BLUE}"><title>{escape(label)}: {value}</title></rect>')
        if i % every == 0:
            parts.append(f'<text x="{x:.1f}" y="{height - 6}">{escape(label)}</text>')
    return _svg(width, height, "".join(parts), title)


def bar_list(rows: Sequence[tuple[str, float, str]], *, title: str, maximum: float | None = None,
             width: int = 600, color_by_ratio: bool = False) -> Markup:
    """Horizontal bars, one per row: (label, value, text shown at the bar's end)."""
    if not rows:
        return empty(title)
    label_w, row_h = 190, 24
    peak = maximum or max(v for _, v, _ in rows) or 1
    plot_w = width - label_w - 70
    parts = []
    for i, (label, value, shown) in enumerate(rows):
        y = i * row_h + 4
        ratio = min(value / peak, 1.0)
        color = BLUE
        if color_by_ratio:
            color = RED if ratio >= 1 else ORANGE if ratio >= 0.8 else GREEN
        parts.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{escape(_cut(label))}</text>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{plot_w}" height="16" fill="#eee"/>'
                     f'<rect x="{label_w}" y="{y + 3}" width="{plot_w * ratio:.1f}" height="16" '
                     f'fill="{color}">'
                     f"<title>{escape(label)}: {escape(shown)}</title></rect>"
                     f'<text x="{label_w + plot_w + 6}" y="{y + 15}">{escape(shown)}</text>')
    return _svg(width, len(rows) * row_h + 8, "".join(parts), title)


def empty(title: str) -> Markup:
    return _svg(600, 60, f'<text x="300" y="35" text-anchor="middle" fill="{GREY}">'
                         f"nothing to show yet</text>", title)


def _cut(text: str, limit: int = 28) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
