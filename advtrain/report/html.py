"""One self-contained HTML file from a report's Markdown: images embedded, no external requests.

Why not a Markdown package: the reports are written by this package in a small, fixed subset of
Markdown (ATX headings, paragraphs, bullet lists, pipe tables, fenced code, images on their own line,
inline code, bold, links), so a converter for exactly that subset is short, has no dependency, and the
HTML and the Markdown cannot drift apart: the HTML is always made from the Markdown file it sits next
to. Images are read from the report folder and inlined as base64 data URIs, so the file can be mailed
or attached to an issue on its own.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

__all__ = ["markdown_to_html", "write_html"]

_IMAGE_LINE = re.compile(r"^!\[(?P<alt>[^\]]*)\]\((?P<src>[^)\s]+)\)\s*$")
_HEADING = re.compile(r"^(#{1,6})\s+(.*)$")
_BULLET = re.compile(r"^[-*]\s+(.*)$")
_TABLE_RULE = re.compile(r"^\|?\s*:?-{3,}:?\s*(\|\s*:?-{3,}:?\s*)*\|?\s*$")
_MIME = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}

STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;
max-width:1200px;padding:0 1em;color:#1b1b1b;line-height:1.45}
table{border-collapse:collapse;margin:1em 0;font-size:0.85em;display:block;overflow-x:auto}
th,td{border:1px solid #ccc;padding:0.25em 0.5em;text-align:left;vertical-align:top}
th{background:#f2f2f2}
tr:nth-child(even) td{background:#fafafa}
code{background:#f4f4f4;padding:0 0.2em;border-radius:3px;font-size:0.9em}
pre{background:#f4f4f4;padding:0.7em;overflow-x:auto}
figure{margin:1em 0}
img{max-width:100%;height:auto}
figcaption{font-size:0.85em;color:#555}
.missing{color:#a00}
""".strip()


def _inline(text: str) -> str:
    """Escape, then render `code`, **bold** and [links](url); code spans are left verbatim."""
    out: list[str] = []
    for i, part in enumerate(re.split(r"(`[^`]*`)", text)):
        if i % 2 == 1:
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
            continue
        s = html.escape(part, quote=False)
        s = s.replace("&lt;br&gt;", "<br>")  # the only raw HTML the reports use (table cells)
        s = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", s)
        s = re.sub(
            r"\[([^\]]+)\]\(([^)\s]+)\)",
            lambda m: f'<a href="{html.escape(m.group(2))}">{m.group(1)}</a>',
            s,
        )
        out.append(s)
    return "".join(out)


def _cells(line: str) -> list[str]:
    """Split a pipe-table row; `\\|` is a literal pipe (it appears inside commands)."""
    s = line.strip()
    if s.startswith("|"):
        s = s[1:]
    if s.endswith("|") and not s.endswith("\\|"):
        s = s[:-1]
    cells = re.split(r"(?<!\\)\|", s)
    return [c.strip().replace("\\|", "|") for c in cells]


def _image(alt: str, src: str, base_dir: Path) -> str:
    path = base_dir / src
    mime = _MIME.get(path.suffix.lower())
    if mime is None or not path.is_file():
        return f'<p class="missing">[image {html.escape(src)} not found]</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    cap = f"<figcaption>{html.escape(alt)}</figcaption>" if alt else ""
    return f'<figure><img src="data:{mime};base64,{data}" alt="{html.escape(alt)}">{cap}</figure>'


def markdown_to_html(markdown: str, base_dir: Path, *, title: str = "advtrain report") -> str:
    """The whole HTML document for `markdown`, images read from `base_dir` and embedded."""
    lines = markdown.splitlines()
    body: list[str] = []
    para: list[str] = []
    i = 0

    def flush() -> None:
        if para:
            body.append(f"<p>{_inline(' '.join(para))}</p>")
            para.clear()

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
        elif stripped.startswith("```"):
            flush()
            j = i + 1
            while j < len(lines) and not lines[j].strip().startswith("```"):
                j += 1
            body.append(f"<pre><code>{html.escape(chr(10).join(lines[i + 1 : j]))}</code></pre>")
            i = j + 1
        elif m := _HEADING.match(stripped):
            flush()
            level = len(m.group(1))
            body.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif m := _IMAGE_LINE.match(stripped):
            flush()
            body.append(_image(m.group("alt"), m.group("src"), base_dir))
            i += 1
        elif (
            stripped.startswith("|")
            and i + 1 < len(lines)
            and _TABLE_RULE.match(lines[i + 1].strip())
        ):
            flush()
            head = _cells(stripped)
            rows: list[list[str]] = []
            i += 2
            while i < len(lines) and lines[i].strip().startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            th = "".join(f"<th>{_inline(c)}</th>" for c in head)
            trs = "".join(
                "<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in rows
            )
            body.append(f"<table><thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>")
        elif _BULLET.match(stripped):
            flush()
            items: list[str] = []
            while i < len(lines) and (m := _BULLET.match(lines[i].strip())):
                item = [m.group(1)]
                i += 1
                while (  # continuation lines of the same item
                    i < len(lines)
                    and lines[i].startswith("  ")
                    and lines[i].strip()
                    and not _BULLET.match(lines[i].strip())
                ):
                    item.append(lines[i].strip())
                    i += 1
                items.append(f"<li>{_inline(' '.join(item))}</li>")
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para.append(stripped)
            i += 1
    flush()
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>\n{STYLE}\n</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )


def write_html(
    markdown_path: Path, html_path: Path | None = None, *, title: str | None = None
) -> Path:
    """Write the self-contained HTML of a Markdown report next to it (report.md -> report.html)."""
    markdown_path = Path(markdown_path)
    html_path = html_path or markdown_path.with_suffix(".html")
    text = markdown_path.read_text()
    if title is None:
        first = next((ln for ln in text.splitlines() if ln.startswith("# ")), "# advtrain report")
        title = first[2:].strip()
    html_path.write_text(markdown_to_html(text, markdown_path.parent, title=title))
    return html_path
