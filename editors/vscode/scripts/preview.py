"""The picture in docs/editor.md: an editor view drawn from the real server's answers.

    python editors/vscode/scripts/preview.py OUT.html   # then: chromium --headless --screenshot ...

This is not VS Code.  It is an HTML page laid out like it, made from what
``convdsl lsp`` answered over stdio for a demo file (its inlay hints, its
diagnostics, a hover), with the colours of the extension's TextMate grammar
as vscode-textmate applies it (scripts/tokenize.js).
"""
from __future__ import annotations

import html
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
EXT = ROOT / "editors" / "vscode"
sys.path.insert(0, str(ROOT))

from tests.lsp.session import Session  # noqa: E402  (the test suite's LSP client)

DEMO = '''import "blocks/resnet.cdl"

# a small residual classifier for 64x64 images
network demo(image: f32[N, 3, 64, 64], classes=10) {
    x = image | conv2d(32, 3, stride=2, pad=1) as stem | batchnorm as bn | relu
    x = x | basic(32) as block1
    y = x | basic(64, stride=2) as block2
    return y | global_avgpool(keepdim=false) | linear(classes) as fc
}

network broken(image: f32[N, 3, 64, 64]) {
    y = image | conv2d(64, 3, pad=same)
    z = y | maxpool2d(2) | conv2d(128, 1)
    return z + y
}
'''

COLORS = [  # (scope prefix, colour): VS Code's Dark+ theme
    ("comment", "#6a9955"), ("string", "#ce9178"), ("constant.numeric", "#b5cea8"),
    ("constant.language", "#569cd6"), ("keyword.declaration", "#569cd6"), ("keyword.operator.pipe", "#d4d4d4"),
    ("keyword", "#c586c0"), ("storage.type", "#4ec9b0"), ("entity.name.type", "#4ec9b0"),
    ("entity.name.function", "#dcdcaa"), ("entity.name.label", "#9cdcfe"), ("support.function", "#dcdcaa"),
    ("variable.parameter", "#9cdcfe"),
]


def colour(scopes: list[str]) -> str | None:
    for scope in reversed(scopes):
        for prefix, c in COLORS:
            if scope.startswith(prefix):
                return c
    return None


def render(text: str, tokens, hints, diags, hover) -> str:
    lines = text.split("\n")
    at: dict[tuple[int, int], list[str]] = {}
    for h in hints:
        label = h.label if isinstance(h.label, str) else "".join(p.value for p in h.label)
        at.setdefault((h.position.line, h.position.character), []).append(label)
    squiggles = {(d.range.start.line, d.range.start.character, d.range.end.character) for d in diags
                 if d.range.start.line == d.range.end.line}
    rows = []
    for n, line in enumerate(lines):
        cells = []
        cuts = sorted({0, len(line), *[c for (ln, c) in at if ln == n],
                       *[x for (ln, a, b) in squiggles if ln == n for x in (a, b)],
                       *[t[0] for t in tokens[n]], *[t[1] for t in tokens[n]]})
        for a, b in zip(cuts, cuts[1:] + [None]):
            for label in at.get((n, a), []):
                cells.append(f'<span class="hint">{html.escape(label)}</span>')
            if b is None:
                break
            scopes = next((t[2] for t in tokens[n] if t[0] <= a < t[1]), [])
            c = colour(scopes)
            style = f' style="color:{c}"' if c else ""
            bad = any(ln == n and s <= a < e for (ln, s, e) in squiggles)
            cls = ' class="bad"' if bad else ""
            cells.append(f"<span{cls}{style}>{html.escape(line[a:b])}</span>")
        rows.append(f'<div class="line"><span class="no">{n + 1}</span>{"".join(cells)}</div>')
        for d in diags:
            if d.range.start.line == n:
                first = d.message.split("\n")
                rows.append(f'<div class="diag"><b>{html.escape(d.code or "")}</b>: {html.escape(first[0])}'
                            + "".join(f"<br/>{html.escape(x)}" for x in first[1:]) + "</div>")
        if hover is not None and n == hover[0]:
            rows.append(f'<div class="hover">{hover[1]}</div>')
    return f"""<!doctype html><html><head><meta charset="utf-8"><style>
body {{ background:#1e1e1e; color:#d4d4d4; font: 14px/1.5 'DejaVu Sans Mono', monospace; margin:0; padding:14px; }}
.title {{ color:#999; font-family: 'DejaVu Sans', sans-serif; font-size:12px; margin-bottom:8px; }}
.line {{ white-space:pre; }} .no {{ display:inline-block; width:2.5em; color:#6e7681; text-align:right; margin-right:1.5em; }}
.hint {{ background:#2d3540; color:#a0a8b4; border-radius:4px; padding:0 5px; margin-left:6px; font-size:12px; }}
.bad {{ text-decoration: underline wavy #f14c4c; text-underline-offset: 3px; }}
.diag {{ margin: 2px 0 6px 4em; padding:4px 8px; border-left:3px solid #f14c4c; background:#2b1f1f; color:#f0b4b4;
        font-size:12px; white-space:normal; max-width:880px; }}
.hover {{ margin: 2px 0 6px 12em; padding:6px 10px; border:1px solid #454545; background:#252526; font-size:12px;
         white-space:normal; max-width:760px; color:#cccccc; }}
.hover code {{ color:#dcdcaa; }}
</style></head><body>
<div class="title">demo.cdl — rendered from <code>convdsl lsp</code> responses (inlay hints, diagnostics, hover) with the
extension's TextMate grammar; not a VS Code screenshot</div>
{"".join(rows)}
</body></html>"""


def markdown_to_html(md: str) -> str:
    out = []
    in_code = False
    for line in md.split("\n"):
        if line.startswith("```"):
            in_code = not in_code
            continue
        text = html.escape(line)
        if in_code:
            out.append(f"<code>{text}</code>")
        elif line.strip():
            parts = text.split("`")
            out.append("".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts)))
    return "<br/>".join(out)


def main(out: str) -> int:
    with tempfile.TemporaryDirectory() as d:
        demo = ROOT / "examples" / "demo.cdl"  # a buffer only: never written
        s = Session(ROOT / "examples")
        try:
            uri = s.open(demo, DEMO)
            diags = s.diagnostics(uri, s.versions[uri])
            hints = s.hints(uri)
            line = DEMO.split("\n").index(next(ln for ln in DEMO.split("\n") if "conv2d(128" in ln))
            col = DEMO.split("\n")[line].index("conv2d(128") + 2
            h = s.hover(uri, line, col)
        finally:
            s.close()
        src = Path(d) / "demo.cdl"
        src.write_text(DEMO)
        tokens = json.loads(subprocess.run(["node", str(EXT / "scripts" / "tokenize.js"), str(src)], check=True,
                                           capture_output=True, text=True, cwd=EXT).stdout)
    hover = (line, markdown_to_html(h.contents.value)) if h is not None else None
    Path(out).write_text(render(DEMO, tokens, hints, diags, hover))
    print(f"wrote {out}: {len(hints)} hints, {len(diags)} diagnostics")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
