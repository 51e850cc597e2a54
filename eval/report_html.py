"""report.html beside report.md: the same report as one self-contained page, its tables as HTML
tables and its plots inline (base64 PNG), so it opens anywhere and can be mailed as one file.

It reads the Markdown that `eval.report` writes, which uses a small part of Markdown: headings,
paragraphs, `- ` lists, pipe tables, images on their own line, **bold** and `code`.
"""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from zs_llm.checkpoint import atomic_write_text

_IMAGE = re.compile(r"!\[(?P<alt>[^\]]*)\]\((?P<src>[^)]+)\)")
_STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:3px 8px;
text-align:left}th{background:#f3f3f3}tr:nth-child(even) td{background:#fafafa}code{background:#f3f3f3;
padding:0 3px}img{max-width:100%;height:auto;display:block;margin:1em 0}"""


def _inline(text: str) -> str:
    """One line of Markdown text as HTML: escaped, with `code` and **bold**."""
    parts = re.split(r"(`[^`]*`)", text)
    out = []
    for part in parts:
        if len(part) >= 2 and part.startswith("`") and part.endswith("`"):
            out.append(f"<code>{html.escape(part[1:-1])}</code>")
        else:
            out.append(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", html.escape(part)))
    return "".join(out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _image(alt: str, src: str, folder: Path) -> str:
    path = folder / src
    if not path.is_file():
        return f"<p><em>{html.escape(alt)}: {html.escape(src)} is missing</em></p>"
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    kind = "svg+xml" if path.suffix == ".svg" else "png"
    return f'<img alt="{html.escape(alt)}" src="data:image/{kind};base64,{data}">'


def markdown_to_html(md: str, folder: Path, title: str = "report") -> str:
    """The HTML page of report Markdown `md`; images are read from `folder` and inlined."""
    body: list[str] = []
    lines = md.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{_inline(line[level:].strip())}</h{level}>")
            i += 1
        elif line.lstrip().startswith("|"):
            block = []
            while i < len(lines) and lines[i].lstrip().startswith("|"):
                block.append(lines[i])
                i += 1
            rows = [r for r in block if not re.fullmatch(r"\s*\|[\s|:-]*\|\s*", r)]  # the |---| line
            head, rest = (rows[0], rows[1:]) if len(rows) > 1 or len(block) > 1 else (None, rows)
            table = ["<table>"]
            if head is not None:
                table.append("<thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in _cells(head)) + "</tr></thead>")
            table.append("<tbody>" + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in _cells(r)) + "</tr>"
                                             for r in rest) + "</tbody></table>")
            body.append("".join(table))
        elif _IMAGE.fullmatch(line.strip()):
            m = _IMAGE.fullmatch(line.strip())
            body.append(_image(m["alt"], m["src"], folder))
            i += 1
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            body.append("<ul>" + "".join(items) + "</ul>")
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not lines[i].startswith(("#", "- ")) \
                    and not lines[i].lstrip().startswith("|") and not _IMAGE.fullmatch(lines[i].strip()):
                para.append(_inline(lines[i]))
                i += 1
            body.append("<p>" + " ".join(para) + "</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{_STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")


def write_html(md_path: Path) -> Path:
    """report.html beside `md_path` (report.md), its plots inlined."""
    md_path = Path(md_path)
    first = md_path.read_text(encoding="utf-8").splitlines()[:1]
    title = first[0].lstrip("# ").strip() if first else "report"
    out = md_path.with_suffix(".html")
    atomic_write_text(out, markdown_to_html(md_path.read_text(encoding="utf-8"), md_path.parent, title))
    return out
