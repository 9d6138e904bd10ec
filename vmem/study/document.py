"""A report as a list of blocks, rendered twice: Markdown beside its PNGs, and one self-contained
HTML file with the figures embedded as base64 data URIs. Sections are numbered when rendered, so
the numbers run 1, 2, 3 ... over the sections a report shows, whichever it leaves out."""

from __future__ import annotations

import base64
import html
import re
import unicodedata
from pathlib import Path

import pandas as pd

STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
line-height:1.45;color:#222}table{border-collapse:collapse;font-size:.85em;margin:.8em 0}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}img{max-width:100%}figcaption{font-size:.9em;
color:#555}code{background:#f3f3f3;padding:0 .2em}pre.example{font-family:ui-monospace,
monospace;font-size:.85em;white-space:pre-wrap;overflow-wrap:anywhere;background:#f7f7f7;
border-left:3px solid #bbb;padding:.4em .6em;margin:.2em 0 .8em}.example .label{color:#555}
.example .sep{color:#c00;font-weight:bold}.example .cont{background:#fff3c4}"""
# Shown in place of invisible characters in examples.
VISIBLE = {"\n": "↵", "\t": "→", "\r": "␍"}
_REF = "\x00section:{}\x00"


class Document:
    def __init__(self, title: str):
        self.title = title
        self.blocks: list[tuple] = []

    def heading(self, text: str) -> None:
        self.blocks.append(("heading", text))

    def section(self, title: str) -> None:
        """A heading numbered at render time."""
        self.blocks.append(("section", title))

    @staticmethod
    def ref(title: str) -> str:
        """Text that renders as "section N", N the number the section `title` gets."""
        return _REF.format(title)

    def examples(self, items: list[tuple[str, str, str]]) -> None:
        """(label, prompt, continuation) texts, shown monospace with invisible characters marked
        and the prompt and continuation apart."""
        self.blocks.append(("examples", items))

    def paragraph(self, text: str) -> None:
        self.blocks.append(("paragraph", text))

    def bullets(self, items: list[str]) -> None:
        self.blocks.append(("bullets", items))

    def table(self, frame: pd.DataFrame) -> None:
        """A table of already formatted strings."""
        self.blocks.append(("table", frame))

    def figure(self, path: str, caption: str) -> None:
        """`path` relative to the report folder."""
        self.blocks.append(("figure", path, caption))

    def _resolved(self) -> list[tuple]:
        """The blocks with sections numbered and references to them filled in."""
        numbers, blocks = {}, []
        for kind, *body in self.blocks:
            if kind == "section":
                numbers[body[0]] = len(numbers) + 1
                kind, body = "heading", [f"{numbers[body[0]]}. {body[0]}"]
            blocks.append((kind, *body))

        def fill(text: str) -> str:
            for title, number in numbers.items():
                text = text.replace(_REF.format(title), f"section {number}")
            return text

        return [("paragraph", fill(b[1])) if b[0] == "paragraph"
                else ("bullets", [fill(i) for i in b[1]]) if b[0] == "bullets" else b
                for b in blocks]

    def markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for kind, *body in self._resolved():
            if kind == "heading":
                out += [f"## {body[0]}", ""]
            elif kind == "paragraph":
                out += [body[0], ""]
            elif kind == "bullets":
                out += [f"- {item}" for item in body[0]] + [""]
            elif kind == "table":
                frame = body[0]
                out.append("| " + " | ".join(frame.columns) + " |")
                out.append("|" + "|".join("---" for _ in frame.columns) + "|")
                out += ["| " + " | ".join(row) + " |" for row in frame.astype(str).to_numpy()]
                out.append("")
            elif kind == "examples":
                for label, prompt, continuation in body[0]:
                    text = f"{visible(prompt)} | {visible(continuation)}"
                    fence = "`" * max(3, _longest_backtick_run(text) + 1)
                    out += [f"{label}:", "", fence, text, fence, ""]
            else:
                path, caption = body
                out += [f"![{caption}]({path})", "", f"*{caption}*", ""]
        return "\n".join(out)

    def html(self, root: Path) -> str:
        """One file: figures under `root` are read and embedded."""
        out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
               f"<title>{html.escape(self.title)}</title><style>{STYLE}</style></head><body>",
               f"<h1>{html.escape(self.title)}</h1>"]
        for kind, *body in self._resolved():
            if kind == "heading":
                out.append(f"<h2>{html.escape(body[0])}</h2>")
            elif kind == "paragraph":
                out.append(f"<p>{_inline(body[0])}</p>")
            elif kind == "bullets":
                out.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in body[0]) + "</ul>")
            elif kind == "table":
                frame = body[0]
                head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
                rows = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row)
                               + "</tr>" for row in frame.astype(str).to_numpy())
                out.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            elif kind == "examples":
                out += [f'<pre class="example"><span class="label">{html.escape(label)}\n'
                        f'</span><span class="prompt">{html.escape(visible(prompt))}</span>'
                        f'<span class="sep"> | </span><span class="cont">'
                        f"{html.escape(visible(continuation))}</span></pre>"
                        for label, prompt, continuation in body[0]]
            else:
                path, caption = body
                data = base64.b64encode((root / path).read_bytes()).decode("ascii")
                out.append(f'<figure><img src="data:image/png;base64,{data}" '
                           f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                           "</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"


def _inline(text: str) -> str:
    """Escape, then render the one Markdown span the report uses: `code`."""
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def visible(text: str) -> str:
    """Newlines, tabs and carriage returns as marks (a newline keeps no line break: one example
    is one line of text), other control characters as \\xNN escapes."""
    out = []
    for char in text:
        if char in VISIBLE:
            out.append(VISIBLE[char])
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"):
            out.append(f"\\x{ord(char):02x}" if ord(char) < 256 else f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return "".join(out)


def _longest_backtick_run(text: str) -> int:
    return max((len(run) for run in re.findall("`+", text)), default=0)
