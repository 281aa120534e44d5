"""The docs point at things that exist: every function docs/DEVIATIONS.md names in its "code" column is
defined in the file it names, and every relative link in README.md and docs/*.md reaches a file (and, for
`file.md#anchor`, a heading of that file).

Reads source with `ast` only (no import of the code, no torch), so it takes well under a second.

The "code" cells look like

    `rr/convert.py decide`, `pruned_row_norm`; `rr/resrep.py ResRepHook.update_masks`, `reset_gradients` (`ZERO_NORM`)

a backticked path, optionally followed by names, starts a file; a backticked name without a path belongs to the
last file; `Class.method` is a def inside that class, and a bare name after it may be a member of the same class;
parenthesised text is a note and is not checked.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEVIATIONS = ROOT / "docs" / "DEVIATIONS.md"
DOC_FILES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md"))


# ---------------------------------------------------------------------------------------------- the code column

def table_rows(text):
    """The cells of every table body row (header and separator rows left out), split on unescaped '|'."""
    rows, header_seen = [], False
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("|"):
            header_seen = False
            continue
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
        if all(re.fullmatch(r":?-{3,}:?", c) for c in cells if c):
            header_seen = True
            continue
        if header_seen:
            rows.append(cells)
    return rows


def code_refs(cell):
    """[(path, [names])] from one "code" cell, in order."""
    cell = re.sub(r"\([^()]*\)", " ", cell)  # notes such as (`ZERO_NORM`) are not checked
    refs = []
    for token in re.findall(r"`([^`]+)`", cell):
        words = token.split()
        if words[0].endswith(".py") or "/" in words[0]:
            refs.append((words[0], words[1:]))
        elif refs:
            refs[-1][1].extend(words)
        else:
            raise AssertionError(f"code cell {cell!r}: name {token!r} comes before any file")
    return refs


def deviation_refs():
    """{path: [(name, cell)]} over every table of docs/DEVIATIONS.md (a path with no names gets an empty list)."""
    refs = {}
    for cells in table_rows(DEVIATIONS.read_text(encoding="utf-8")):
        for path, names in code_refs(cells[-1]):
            refs.setdefault(path, []).extend((name, cells[-1]) for name in names)
    return refs


def top_level(tree):
    """{name: node} for every def, class and assignment at module level (also inside module-level if/try/with)."""
    found = {}

    def visit(body):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                found[node.name] = node
            elif isinstance(node, ast.Assign):
                for target in node.targets:
                    for leaf in ast.walk(target):
                        if isinstance(leaf, ast.Name):
                            found[leaf.id] = node
            elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
                found[node.target.id] = node
            elif isinstance(node, (ast.If, ast.Try, ast.With)):
                for part in ("body", "orelse", "finalbody"):
                    visit(getattr(node, part, []))
                for handler in getattr(node, "handlers", []):
                    visit(handler.body)

    visit(tree.body)
    return found


def members(cls):
    """Names a class body defines: methods, nested classes and class attributes."""
    names = set()
    for node in cls.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(leaf.id for t in node.targets for leaf in ast.walk(t) if isinstance(leaf, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
    return names


def missing_names(path, names):
    """The names (with their cells) that `path` does not define."""
    defined = top_level(ast.parse((ROOT / path).read_text(encoding="utf-8"), filename=path))
    missing, last_class = [], None
    for name, cell in names:
        head, _, rest = name.partition(".")
        if rest:
            node = defined.get(head)
            if not isinstance(node, ast.ClassDef):
                missing.append(f"{name} (no class {head} at the top level)")
            elif rest.split(".")[0] not in members(node):
                missing.append(f"{name} (class {head} has no {rest.split('.')[0]})")
            last_class = node if isinstance(node, ast.ClassDef) else None
        elif head not in defined and not (last_class is not None and head in members(last_class)):
            where = f" or in class {last_class.name}" if last_class is not None else ""
            missing.append(f"{name} (not defined at the top level{where})")
    return missing


REFS = deviation_refs()


def test_the_code_column_was_parsed():
    assert len(REFS) >= 30, f"only {len(REFS)} files found in the code column of {DEVIATIONS}"


@pytest.mark.parametrize("path", sorted(REFS))
def test_every_function_the_deviations_name_exists(path):
    assert (ROOT / path).is_file(), f"docs/DEVIATIONS.md names {path}, which does not exist"
    missing = missing_names(path, REFS[path])
    assert not missing, f"docs/DEVIATIONS.md names in {path} what it does not define:\n  " + "\n  ".join(missing)


# ----------------------------------------------------------------------------------------------------- links

LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def without_code_blocks(text):
    return re.sub(r"^( {4}|\t).*$", "", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)


def relative_links(doc):
    for target in LINK.findall(without_code_blocks(doc.read_text(encoding="utf-8"))):
        if not re.match(r"[a-z][a-z0-9+.-]*:", target, re.I):  # http:, mailto: ... are not checked
            yield target


def anchors(doc):
    """The anchors GitHub gives the headings of a Markdown file: lower case, punctuation dropped, spaces as
    hyphens, a repeated one numbered."""
    seen, found = {}, set()
    for line in without_code_blocks(doc.read_text(encoding="utf-8")).splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", m.group(1)).replace("`", "")
        slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_points_to_a_file(doc):
    broken = []
    for target in relative_links(doc):
        path, _, anchor = target.partition("#")
        dest = (doc.parent / path) if path else doc
        if not dest.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target} (no heading with that anchor in {dest.relative_to(ROOT)})")
    assert not broken, f"{doc.relative_to(ROOT)} links to what does not exist:\n  " + "\n  ".join(broken)
