"""pyproject.toml lists every package: a non-editable install (a wheel) contains only what
is listed, so a forgotten subpackage works in the repository and breaks for users."""
from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_is_in_pyproject() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(conf["packages"])
    dirs = {name: ROOT / path for name, path in conf["package-dir"].items()}
    dirs.setdefault("convdsl", ROOT / "convdsl")
    missing = []
    for name, base in dirs.items():
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            pkg = ".".join([name, *rel.parts])
            if "__pycache__" not in rel.parts and pkg not in listed:
                missing.append(pkg)
    assert not missing, f"add to [tool.setuptools] packages: {missing}"


def test_package_data_globs_match_files() -> None:
    conf = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    dirs = {name: ROOT / path for name, path in conf["package-dir"].items()}
    for pkg, globs in conf["package-data"].items():
        base = dirs.get(pkg) or next(dirs[p] / Path(*pkg[len(p) + 1:].split(".")) for p in sorted(dirs, key=len, reverse=True)
                                     if pkg.startswith(p + "."))
        for g in globs:
            assert list(base.glob(g)), f"{pkg}: '{g}' matches no file under {base}"


def test_convdsl_links_backends_and_grammar() -> None:
    """convdsl/backends and convdsl/grammar are links to the top-level folders, so that tools which
    read files (pyright, mypy) and `python -m pytest` from the repository root resolve
    convdsl.backends.* and convdsl.grammar to the same files as the installed package."""
    for name in ("backends", "grammar"):
        link = ROOT / "convdsl" / name
        assert link.is_symlink() and link.resolve() == (ROOT / name).resolve(), link
