"""Every command shown in README.md, the book's introduction and its user pages (book/docs/) runs.

The commands are read from the pages' fenced code blocks, so a page that shows a command which no
longer works fails here. A command runs for real where that is quick (a sweep's --dry-run, an
MLflow import, the JupyterLab settings); a long one (training, a whole sweep, `make book`) is parsed
by the real argument parser, or run with --help or as `make -n`, which fails on a renamed flag or a
missing target. A command no rule below knows fails the test, so a new page cannot show an untested
command.
"""
from __future__ import annotations

import ast
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gflnb.book import ROOT
from gflnb.cli import _parser as gflnb_parser

PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "book" / "intro.md",
         *sorted((ROOT / "book" / "docs").glob("*.md"))]
BIN = Path(sys.executable).parent
FENCE = re.compile(r"^(`{3,}|~{3,})\s*([^\s`]*)[^\n]*\n(.*?)^\1\s*$", re.M | re.S)
ENV_VAR = re.compile(r"^[A-Z_][A-Z0-9_]*=")


def code_blocks(path: Path) -> list[tuple[str, str]]:
    """(language, text) of each fenced block of a markdown page."""
    return [(m.group(2).lower(), m.group(3)) for m in FENCE.finditer(path.read_text())]


def shell_commands(text: str) -> list[str]:
    """The commands of a shell block: continuation lines joined, comments and blank lines dropped."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def shown(lang: str) -> list[tuple[str, str]]:
    """(page, text) of every shell command, or every python block, on the pages."""
    items = []
    for page in PAGES:
        for block_lang, text in code_blocks(page):
            if lang == "bash" and block_lang in ("bash", "sh", "shell", "console"):
                items += [(page.relative_to(ROOT).as_posix(), c) for c in shell_commands(text)]
            elif lang == "python" and block_lang in ("python", "py"):
                items.append((page.relative_to(ROOT).as_posix(), text))
    return items


COMMANDS = shown("bash")
SNIPPETS = shown("python")


def _env() -> dict:
    # the checkout under test first, whichever checkout the venv was installed from
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def _run(argv: list[str], cwd: Path = ROOT, env: dict | None = None, timeout: int = 300):
    return subprocess.run(argv, cwd=cwd, env={**_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)


def _flags(words: list[str]) -> list[str]:
    return [w.split("=")[0] for w in words if w.startswith("--")]


def _help_has_flags(argv: list[str], words: list[str]) -> None:
    """`argv --help` runs, and names every --flag of the shown command."""
    r = _run(argv + ["--help"])
    assert r.returncode == 0, f"{' '.join(argv)} --help: {r.stderr[-2000:]}"
    missing = [f for f in _flags(words) if f not in r.stdout + r.stderr]
    assert not missing, f"{' '.join(argv)} has no {missing}"


def _gflnb(words: list[str], cwd: Path, tmp: Path, env: dict) -> None:
    try:
        a = gflnb_parser().parse_args(words)  # argparse exits (status 2) on an unknown flag or subcommand
    except SystemExit as e:
        raise AssertionError(f"gflnb {shlex.join(words)}: the parser rejects it ({e})") from None
    exe = [str(BIN / "gflnb")] if (BIN / "gflnb").exists() else [sys.executable, "-m", "gflnb"]
    if a.cmd == "sweep" and a.dry_run:
        r = _run(exe + words, env=env)  # runs nothing; checks the grid, its variants and data
        assert r.returncode == 0, r.stderr[-2000:]
        assert "points" in r.stdout.splitlines()[-1], r.stdout[-500:]
    elif a.cmd == "mlflow-import":
        # the committed records into a copy, so that the import's database lands in tmp
        src = ROOT / a.sweep
        dst = tmp / a.sweep
        shutil.copytree(src, dst)
        r = _run(exe + words, cwd=tmp, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
        assert (dst / "mlflow.db").exists() and re.match(r"\d+ runs imported", r.stdout), r.stdout
    else:
        _help_has_flags(exe + [a.cmd], words)


def run_shown(command: str, tmp: Path) -> None:
    words = shlex.split(command)
    env = {}
    while words and ENV_VAR.match(words[0]):
        k, v = words.pop(0).split("=", 1)
        env[k] = v
    prog = words[0].removeprefix(".venv/bin/")
    args = words[1:]
    if prog == "make":
        r = _run(["make", "-n", *args])  # prints the recipe without running it; fails on a missing target
        assert r.returncode == 0, r.stderr
        return
    if prog == "gflnb":
        return _gflnb(args, ROOT, tmp, env)
    if prog == "torchrun":
        i = args.index("-m")
        _help_has_flags([str(BIN / "torchrun")], args[:i])
        assert args[i + 1] == "gflnb", command
        return _gflnb(args[i + 2:], ROOT, tmp, env)
    if prog in ("python", "python3"):
        if args[0] == "-m":
            module, rest = args[1], args[2:]
            if module == "gflnb":
                return _gflnb(rest, ROOT, tmp, env)
            if module == "gflnb.lab" and rest == ["install"]:
                # the real command, with the settings written under tmp instead of the venv
                code = f"import sys; sys.prefix = {str(tmp)!r}; from gflnb.lab import main; main(['install'])"
                r = _run([sys.executable, "-c", code])
                assert r.returncode == 0, r.stderr
                assert (tmp / "share/jupyter/lab/settings/overrides.json").exists()
                return
            subcommands = {"gflnb.book": ("run", "build"), "gflnb.numerics.optrace": ("record", "compare"),
                           "gflnb.study.finaltest": (), "gflnb.study.decide": (), "gflnb.study.pilot": ()}
            if module in subcommands:
                sub = [rest[0]] if rest and rest[0] in subcommands[module] else []
                return _help_has_flags([sys.executable, "-m", module, *sub], rest)
            raise AssertionError(f"no rule for python -m {module}: {command}")
        script = ROOT / args[0]
        assert script.exists(), command
        return _help_has_flags([sys.executable, str(script)], args[1:])
    tools = {"tensorboard": 0, "mlflow": 1, "dask": 1}  # how many subcommand words precede the flags
    if prog in tools:
        n = tools[prog]
        return _help_has_flags([str(BIN / prog), *args[:n]], args[n:])
    raise AssertionError(f"no rule for this command, so it is not tested: {command}")


def test_the_pages_show_commands():
    # the extraction itself: an empty list would make the test below pass on nothing
    pages = {p for p, _ in COMMANDS}
    assert {"README.md", "book/docs/using.md", "book/docs/sweeps.md", "book/docs/tracking.md",
            "book/docs/onnx.md", "book/docs/reproducibility.md"} <= pages, pages
    assert any(c.startswith("gflnb train") for _, c in COMMANDS)


@pytest.mark.parametrize("page,command", COMMANDS, ids=[f"{p}:{c[:60]}" for p, c in COMMANDS])
def test_shown_command_runs(page, command, tmp_path):
    run_shown(command, tmp_path)


def test_a_broken_command_fails(tmp_path):
    # the rules above are not vacuous: a renamed flag, an unknown tool and a bad make target fail
    for bad in ("gflnb train --config gfl_cpu_demo --work-dir x --train-ann a --train-images b --epochz 3",
                "gflnb sweep experiments/ablations/grid.yaml --dry-run --only no_such_variant",
                "somecli --version", "make no-such-target", "dask worker --no-such-flag 1"):
        with pytest.raises(AssertionError):
            run_shown(bad, tmp_path)


@pytest.mark.parametrize("page,code", SNIPPETS, ids=[p for p, _ in SNIPPETS])
def test_shown_python_names_exist(page, code):
    """A python snippet's imports run, and every function it calls exists (calls need a model)."""
    tree = ast.parse(code)
    ns: dict = {}
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            exec(compile(ast.Module([node], []), page, "exec"), ns)
    # a value the snippet makes (det = gflnb.Detector(...)) is checked through the call that made it
    bound = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            root = name.split(".")[0]
            if root in bound:
                continue
            assert callable(eval(name, ns)), f"{page}: {name} is not callable"


def test_readme_is_an_entrance():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 150
    assert "gflnb predict" in text  # the quick start ends on the user's own images


def test_links_and_layout_resolve():
    """Relative links of the pages, and the paths of the README's layout block, exist."""
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"[a-z]+:", target):
                assert (page.parent / target).exists(), f"{page.relative_to(ROOT)}: broken link {target}"
    layout = [t for lang, t in code_blocks(ROOT / "README.md") if lang == "text"]
    assert layout
    parent = ROOT
    for line in layout[0].splitlines():
        name = line.split()[0]
        indented = line.startswith(" ")
        path = (parent if indented else ROOT) / name
        assert path.exists(), f"README layout: {path.relative_to(ROOT)} does not exist"
        if not indented:
            parent = path
