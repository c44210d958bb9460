"""The documentation's code blocks run, so README.md and docs/ cannot drift from the code.

Every fenced block of README.md and docs/**/*.md is checked:

- ```python blocks are executed, in order, one namespace per page, in a temporary working folder that
  has a ``docs`` link to the repository's docs/ (so ``docs/example.png`` opens). A block that needs what
  only a developer machine has (``../shared/data``, a GPU, a trained run folder, a running service) is
  skipped by a marker on the line before its opening fence::

      <!-- docs-test: skip (needs ../shared/data) -->

  Skips are reported as pytest skips with the page, line and reason, and counted by ``test_docs_summary``.
- ```bash / ```sh / ```shell blocks and blocks without a language: each command (lines joined at a
  trailing backslash, split at ``&&``, ``||``, ``;`` and ``|``, comments dropped) that runs ``fex`` (or
  ``python -m fexsdk.cli``) is parsed by fex's own argparse parser (:func:`fexsdk.cli.build_parser`, as
  ``fex``'s ``main()`` builds it) and never executed, so a made-up flag, a wrong choice or a removed
  command fails. ``python benchmarks/X.py ...`` and ``bash X.sh`` must name an existing file and
  ``python -m MODULE`` an importable module; their ``--flags`` must appear in that script's folder
  (or module's) source. pip, curl, cp and the like are left alone.

Other languages (yaml, text) are not checked.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SKIP_MARK = re.compile(r"^<!--\s*docs-test:\s*skip\s*\((?P<reason>[^)]+)\)\s*-->$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>`{3,}|~{3,})\s*(?P<lang>[\w+-]*)")
PYTHON_LANGS = {"python", "py", "python3"}
SHELL_LANGS = {"bash", "sh", "shell", "console", ""}
OPERATORS = {"&&", "||", ";", "|", "&"}


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the marker's reason, or None

    @property
    def where(self) -> str:
        try:
            rel = self.path.relative_to(REPO)
        except ValueError:
            rel = self.path
        return f"{rel}:{self.line}"


def doc_pages(root: Path = REPO) -> list[Path]:
    return [root / "README.md"] + sorted((root / "docs").rglob("*.md"))


def blocks_of(text: str, path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the skip marker (if any) before each."""
    lines = text.splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, fence, lang = m["indent"], m["fence"], m["lang"].lower()
        start = i
        body: list[str] = []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith(fence):
            line = lines[i]
            body.append(line[len(indent):] if line.startswith(indent) else line.lstrip())
            i += 1
        i += 1  # past the closing fence
        skip = None
        j = start - 1
        while j >= 0 and not lines[j].strip():
            j -= 1
        if j >= 0:
            mark = SKIP_MARK.match(lines[j].strip())
            if mark:
                skip = mark["reason"].strip()
        out.append(Block(path, start + 1, lang, "\n".join(body) + "\n", skip))
    return out


# -- shell blocks ----------------------------------------------------------------------------------
def commands_of(code: str, variables: dict[str, str] | None = None) -> list[list[str]]:
    """Simple commands of a shell block: continuation lines joined, comments dropped, split at operators.

    ``NAME=value`` lines set variables that ``$NAME`` in the lines after them expands to (split into words
    as the shell does, unquoted); leading assignments before a program (``OMP_NUM_THREADS=1 fex ...``)
    are dropped. Unknown variables stay as they are. ``variables`` (updated) carries them between the
    blocks of a page."""
    logical: list[str] = []
    pending = ""
    for raw in code.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        logical.append(line)
    if pending:
        logical.append(pending)
    commands: list[list[str]] = []
    variables = {} if variables is None else variables
    assignment = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", re.S)
    for line in logical:
        if not line.strip():
            continue
        line = re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: variables.get(m[1], m[0]), line)
        lex = shlex.shlex(line, posix=True, punctuation_chars=";&|")
        lex.whitespace_split = True
        lex.commenters = "#"
        words: list[list[str]] = [[]]
        for tok in lex:
            if tok in OPERATORS:
                words.append([])
            else:
                words[-1].append(tok)
        for cmd in words:
            if cmd and all(assignment.match(t) for t in cmd):
                variables.update(assignment.match(t).groups() for t in cmd)
                continue
            while cmd and assignment.match(cmd[0]):
                cmd = cmd[1:]
            if cmd:
                commands.append(cmd)
    return commands


_PARSER = None


def fex_parser():
    global _PARSER
    if _PARSER is None:
        from fexsdk.cli import build_parser

        _PARSER = build_parser()
    return _PARSER


def check_fex(args: list[str]) -> str | None:
    """None when fex's parser accepts ``args``, else its error message. Nothing is run."""
    err, out = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            fex_parser().parse_args(args)
    except SystemExit as exc:
        if exc.code not in (0, None):  # --help and --version exit 0
            lines = [l for l in err.getvalue().strip().splitlines() if l.strip()]
            return lines[-1] if lines else f"exit {exc.code}"
    return None


def _flags(args: list[str]) -> list[str]:
    return [a.split("=", 1)[0] for a in args if a.startswith("--") and len(a) > 2]


def _missing_flags(args: list[str], sources: list[Path]) -> list[str]:
    text = "\n".join(p.read_text(encoding="utf-8", errors="replace") for p in sources if p.is_file())
    return [f for f in _flags(args) if f'"{f}"' not in text and f"'{f}'" not in text]


def _module_sources(name: str) -> list[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return []
    origin = Path(spec.origin)
    return sorted(origin.parent.glob("*.py")) if origin.name == "__main__.py" else [origin]


def check_command(cmd: list[str], root: Path = REPO) -> str | None:
    """None when the command is fine (or not ours to check), else what is wrong with it."""
    prog, args = os.path.basename(cmd[0]), cmd[1:]
    if prog == "fex":
        return check_fex(args)
    if prog in ("python", "python3", "torchrun"):
        if "-m" in args:
            k = args.index("-m")
            if k + 1 >= len(args):
                return "python -m without a module"
            module, rest = args[k + 1], args[k + 2:]
            if module == "fexsdk.cli":
                return check_fex(rest)
            if module.split(".")[0] != "fexsdk":
                return None  # pytest, pip, venv...: not ours
            try:
                found = importlib.util.find_spec(module)
            except ModuleNotFoundError:
                found = None
            if found is None:
                return f"no module {module}"
            missing = _missing_flags(rest, _module_sources(module))
            return f"{module} has no option {', '.join(missing)}" if missing else None
        if prog == "torchrun" or not args:
            return None
        script = args[0]
        if not script.endswith(".py"):
            return None
        path = root / script
        if not path.is_file():
            return f"no script {script}"
        missing = _missing_flags(args[1:], sorted(path.parent.glob("*.py")))
        return f"{script} has no option {', '.join(missing)}" if missing else None
    if prog in ("bash", "sh") and args and args[0].endswith(".sh"):
        return None if (root / args[0]).is_file() else f"no script {args[0]}"
    return None


def check_shell_block(code: str, root: Path = REPO, variables: dict[str, str] | None = None) -> list[str]:
    problems = []
    try:
        commands = commands_of(code, variables)
    except ValueError as exc:  # unbalanced quotes
        return [f"cannot split into commands: {exc}"]
    for cmd in commands:
        why = check_command(cmd, root)
        if why:
            problems.append(f"`{shlex.join(cmd)}`: {why}")
    return problems


# -- collection -------------------------------------------------------------------------------------
ALL_BLOCKS = [b for page in doc_pages() for b in blocks_of(page.read_text(encoding="utf-8"), page)]
PY_BLOCKS = [b for b in ALL_BLOCKS if b.lang in PYTHON_LANGS]
SH_BLOCKS = [b for b in ALL_BLOCKS if b.lang in SHELL_LANGS]


@pytest.mark.parametrize("block", SH_BLOCKS, ids=[b.where for b in SH_BLOCKS])
def test_shell_block(block: Block):
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    variables: dict[str, str] = {}  # set by the page's earlier blocks (D=..., A=...)
    for earlier in SH_BLOCKS:
        if earlier is block:
            break
        if earlier.path == block.path and not earlier.skip:
            commands_of(earlier.code, variables)
    problems = check_shell_block(block.code, variables=variables)
    assert not problems, f"{block.where}:\n" + "\n".join(problems)


_NAMESPACES: dict[Path, dict] = {}


@pytest.mark.parametrize("block", PY_BLOCKS, ids=[b.where for b in PY_BLOCKS])
def test_python_block(block: Block, tmp_path_factory, monkeypatch):
    if block.skip:
        pytest.skip(f"{block.where}: {block.skip}")
    ns = _NAMESPACES.get(block.path)
    if ns is None:  # one namespace and one working folder per page: its blocks run in order
        work = tmp_path_factory.mktemp("docs")
        (work / "docs").symlink_to(REPO / "docs", target_is_directory=True)
        ns = _NAMESPACES[block.path] = {"__name__": "__docs__", "__work__": work}
    monkeypatch.chdir(ns["__work__"])
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    code = compile(block.code, block.where, "exec")
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, ns)


def test_docs_summary(capsys):
    """The counts, for the record (pytest -s or -rA shows them), and that the checks have something to do."""
    run_py = sum(1 for b in PY_BLOCKS if not b.skip)
    run_sh = sum(1 for b in SH_BLOCKS if not b.skip)
    skipped = [b for b in PY_BLOCKS + SH_BLOCKS if b.skip]
    with capsys.disabled():
        print(f"\ndocs: {len(doc_pages())} pages, {len(ALL_BLOCKS)} code blocks: {run_py} python blocks run, "
              f"{run_sh} shell blocks parsed, {len(skipped)} skipped by marker, "
              f"{len(ALL_BLOCKS) - len(PY_BLOCKS) - len(SH_BLOCKS)} of other languages")
        for b in skipped:
            print(f"  skipped {b.where}: {b.skip}")
    assert run_py >= 1 and run_sh >= 1
    fex_lines = sum(1 for b in SH_BLOCKS for c in commands_of(b.code) if os.path.basename(c[0]) == "fex")
    assert fex_lines >= 10, "the docs should show fex commands; did the block parser break?"


# -- the checker itself ----------------------------------------------------------------------------
def test_checker_refuses_what_fex_refuses():
    good = "fex apply docs/example.png -e surprise -o surprise.png   # a comment --not-a-flag\n"
    assert check_shell_block(good) == []
    assert check_shell_block('D=x.npz\nA="--preset tiny --data $D"\nfex train $A --out runs/x --epochs 2\n') == []
    bad = {
        "fex apply photo.jpg -e happy -o out.jpg --made-up-flag\n": "unrecognized arguments: --made-up-flag",
        "fex demo --device tpu\n": "invalid choice",
        "fex frobnicate photo.jpg\n": "invalid choice",
        "fex apply photo.jpg -o out.jpg\n": "required",
        "fex train --preset tiny \\\n    --no-such-option 3 --out runs/x\n": "--no-such-option",
        "pip install -e . && fex apply x.png -e happy -o y.png --bogus\n": "--bogus",
        "OMP_NUM_THREADS=1 fex serve --port 0\n": "--port",
        "python benchmarks/no_such_benchmark.py --count 3\n": "no script",
        "python benchmarks/latency.py --no-such-flag\n": "no option --no-such-flag",
        "python -m fexsdk.no_such_module\n": "no module",
        "python -m fexsdk.cli apply x.png -e happy -o y.png --nope\n": "--nope",
        "bash training/no_such.sh\n": "no script",
        'D=x.npz\nA="--preset tiny --bogus2 --data $D"\nfex train $A --out runs/x\n': "--bogus2",
    }
    for code, fragment in bad.items():
        problems = check_shell_block(code)
        assert problems and fragment in problems[0], (code, problems)
    # Not ours to check: left alone.
    assert check_shell_block("pip install torch --index-url https://download.pytorch.org/whl/cpu\ncurl -s x\n") == []


def test_checker_reads_fences_and_markers(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "Intro.\n\n"
        "```bash\nfex apply a.png -e happy -o b.png\n```\n\n"
        "<!-- docs-test: skip (needs ../shared/data) -->\n"
        "```python\nimport nothing_here\n```\n\n"
        "- a list item:\n\n"
        "  ```python\n  x = 1\n  ```\n"
        "```yaml\na: 1\n```\n"
    )
    blocks = blocks_of(page.read_text(), page)
    assert [(b.lang, b.line, b.skip) for b in blocks] == [
        ("bash", 3, None), ("python", 8, "needs ../shared/data"), ("python", 14, None), ("yaml", 17, None)]
    assert blocks[2].code == "x = 1\n"  # the list item's indent is removed


# -- links ------------------------------------------------------------------------------------------
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors_of(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(m[1]) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def broken_links(path: Path) -> list[str]:
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(\s*)(`{3,}).*?^\1\2", "", text, flags=re.S | re.M)  # fenced blocks
    text = re.sub(r"`[^`\n]*`", "", text)  # inline code
    bad = []
    for m in LINK.finditer(text):
        target = m[1]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, frag = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            bad.append(f"{target}: no file {dest}")
        elif frag and dest.suffix == ".md" and frag not in anchors_of(dest):
            bad.append(f"{target}: no heading #{frag} in {dest.name}")
    return bad


@pytest.mark.parametrize("page", doc_pages(), ids=[str(p.relative_to(REPO)) for p in doc_pages()])
def test_links_resolve(page: Path):
    """Every relative link and image of the docs points at a file that exists (and a heading that does)."""
    bad = broken_links(page)
    assert not bad, f"{page.relative_to(REPO)}:\n" + "\n".join(bad)


def test_link_checker(tmp_path):
    (tmp_path / "a.md").write_text("# Title\n\n## Evaluation (the report's Table 2)\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md) [ok](a.md#evaluation-the-reports-table-2) ![x](missing.png) [y](a.md#nope) "
                    "[web](https://example.org) `[code](nowhere.md)`\n")
    bad = broken_links(page)
    assert len(bad) == 2 and "missing.png" in bad[0] and "#nope" in bad[1], bad
