"""Imports run one way: every jadapt module imports only from its own floor's package or lower floors.

The floors (lowest first) are the table below. A module may import

- any module on a lower floor;
- modules of its own package (``jadapt.models.encoder`` -> ``jadapt.models.config``);
- never a module of another package on the same floor (``adapters`` and ``fusion`` stay
  independent of each other, ``data`` of both) and never one on a higher floor.

Imports are read from the source (``ast``), at module level and inside functions, plus
``importlib.import_module("jadapt....")`` with a literal name. Importing ``a.b.c`` also runs the
``__init__`` of ``a`` and ``a.b``: their module-level imports count as the importer's too.
A module no table row names fails the test, so a new package has to be placed on a floor.
"""
from __future__ import annotations

import ast
from pathlib import Path
from typing import Iterable, Iterator

import pytest

ROOT = Path(__file__).resolve().parents[1]

# (floor, module prefixes), lowest first. The longest matching prefix places a module; a prefix
# names a package (all its modules) or one module; ``<package>.__init__`` names only the
# package's ``__init__.py``.
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("leaves", ("jadapt.tree", "jadapt.runtime", "jadapt.machine", "jadapt.folders", "jadapt.param_paths",
                "jadapt.faults")),
    ("layers", ("jadapt.layers",)),
    # adapters and fusion layers build on the layers; data, conversion and sharding rules need no model
    ("blocks", ("jadapt.adapters", "jadapt.fusion", "jadapt.data", "jadapt.convert", "jadapt.sharding")),
    ("models", ("jadapt.models", "jadapt.distributed")),
    ("checkpoints", ("jadapt.checkpoint",)),
    # loads adapters from checkpoints to fuse them; the package facade re-exports it (lazily)
    ("fusion loading", ("jadapt.fusion.setup", "jadapt.fusion.__init__")),
    ("uses", ("jadapt.train", "jadapt.merge", "jadapt.analysis", "jadapt.interop")),
    ("cli", ("jadapt.cli",)),
    # the lazy top-level API re-exports every floor; nothing inside jadapt imports it
    ("api", ("jadapt.__init__",)),
)

# Same-floor imports across packages that are allowed, as (importer prefix, imported prefix),
# each with its reason. Empty: none is needed today.
SIDEWAYS: dict[tuple[str, str], str] = {}

# Upward imports that could not be removed yet, as (importer, imported) module names, each with
# its reason. Empty: none today.
EXCEPTIONS: dict[tuple[str, str], str] = {}


def _floor_index() -> dict[str, int]:
    return {prefix: i for i, (_, prefixes) in enumerate(FLOORS) for prefix in prefixes}


def place(module: str, floors: dict[str, int] | None = None) -> tuple[str, int]:
    """(the table prefix that places ``module``, its floor number); KeyError if none does."""
    floors = _floor_index() if floors is None else floors
    if module + ".__init__" in floors:
        return module + ".__init__", floors[module + ".__init__"]
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in floors:
            return prefix, floors[prefix]
    raise KeyError(module)


def package_of(module: str) -> str:
    """The group a module belongs to for the same-floor rule: ``jadapt.<package>``."""
    return ".".join(module.split(".")[:2])


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _resolve(base: str, name: str, modules: set[str]) -> str:
    """``from base import name``: the submodule ``base.name`` where it exists, else ``base``."""
    sub = f"{base}.{name}"
    return sub if sub in modules else base


def imports(source: str, module: str, is_package: bool, modules: set[str], *, top_level_only: bool = False
            ) -> Iterator[tuple[str, int]]:
    """(imported jadapt module, line) for every import in ``source``: module level and inside
    functions (unless ``top_level_only``), and ``importlib.import_module`` with a literal name."""
    tree = ast.parse(source)
    nodes: Iterable[ast.AST] = tree.body if top_level_only else ast.walk(tree)
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "jadapt":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = module.split(".") if is_package else module.split(".")[:-1]
                pkg = pkg[: len(pkg) - (node.level - 1)]
                base = ".".join(pkg + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            if base.split(".")[0] != "jadapt":
                continue
            for alias in node.names:
                yield _resolve(base, alias.name, modules), node.lineno
        elif (not top_level_only and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
              and str(node.args[0].value).startswith("jadapt")):
            yield str(node.args[0].value), node.lineno


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:n]) for n in range(1, len(parts))]


def upward_imports(sources: dict[str, tuple[str, bool]], floors: dict[str, int] | None = None,
                   sideways: dict | None = None, exceptions: dict | None = None) -> list[str]:
    """Every import in ``sources`` ({module: (source, is_package)}) that breaks the floors,
    as readable lines; unplaced modules are reported too."""
    floors = _floor_index() if floors is None else floors
    sideways = SIDEWAYS if sideways is None else sideways
    exceptions = EXCEPTIONS if exceptions is None else exceptions
    modules = set(sources)
    problems = []

    def check(importer: str, imported: str, line: int, via: str = "") -> None:
        if imported == importer or importer.startswith(imported + "."):
            return  # a module and its own packages
        try:
            _, mine = place(importer, floors)
            _, theirs = place(imported, floors)
        except KeyError as e:
            problems.append(f"{e.args[0]} is on no floor of the table in tests/test_layering.py")
            return
        if theirs < mine or (importer, imported) in exceptions:
            return
        if theirs == mine and (package_of(importer) == package_of(imported) or any(
                importer.startswith(a) and imported.startswith(b) for a, b in sideways)):
            return
        what = "another package on its own floor" if theirs == mine else "a higher floor"
        problems.append(f"{importer} (line {line}) imports {imported}{via}: {what}")

    eager = {m: [n for n, _ in imports(src, m, pkg, modules, top_level_only=True)]
             for m, (src, pkg) in sources.items() if pkg}
    for module, (source, is_package) in sorted(sources.items()):
        for imported, line in imports(source, module, is_package, modules):
            check(module, imported, line)
            for parent in _parents(imported):
                if module == parent or module.startswith(parent + "."):
                    continue  # already running inside that package
                for n in eager.get(parent, ()):
                    check(module, n, line, via=f" (through {parent}/__init__.py)")
    return sorted(set(problems))


def _package_sources(root: Path) -> dict[str, tuple[str, bool]]:
    return {module_name(p, root): (p.read_text(encoding="utf-8"), p.name == "__init__.py")
            for p in sorted((root / "jadapt").rglob("*.py"))}


# ----------------------------------------------------------------------------------- the checks
def test_every_module_is_on_a_floor():
    floors = _floor_index()
    unplaced = []
    for module in _package_sources(ROOT):
        try:
            place(module, floors)
        except KeyError:
            unplaced.append(module)
    assert not unplaced, f"add these to FLOORS in tests/test_layering.py: {unplaced}"


def test_imports_run_one_way():
    problems = upward_imports(_package_sources(ROOT))
    assert not problems, "imports that run back up:\n  " + "\n  ".join(problems)


def test_named_exceptions_are_still_needed():
    """An exception whose import is gone must leave the table, so the table stays true."""
    sources = _package_sources(ROOT)
    modules = set(sources)
    found = {(m, n) for m, (src, pkg) in sources.items() for n, _ in imports(src, m, pkg, modules)}
    stale = [pair for pair in EXCEPTIONS if pair not in found]
    assert not stale, f"these exceptions no longer occur; remove them: {stale}"


def test_layers_import_no_other_jadapt_package():
    """The bottom floor stands alone: models, adapters and fusion build on it, never the reverse."""
    sources = _package_sources(ROOT)
    modules = set(sources)
    outside = [(m, n) for m, (src, pkg) in sources.items() if m.startswith("jadapt.layers")
               for n, _ in imports(src, m, pkg, modules) if not n.startswith("jadapt.layers")]
    assert not outside, outside


# ------------------------------------------------------------------------- the checker itself
def _sources(entries: dict[str, str], packages: Iterable[str] = ()) -> dict[str, tuple[str, bool]]:
    pk = set(packages)
    return {m: (src, m in pk) for m, src in entries.items()}


@pytest.mark.parametrize("source", [
    "from jadapt.models.encoder import Encoder\n",  # module level
    "def f():\n    from jadapt.models import encoder\n",  # inside a function, from a package
    "def f():\n    import jadapt.models.encoder\n",
    "import importlib\nm = importlib.import_module('jadapt.models.encoder')\n",  # hidden by importlib
    "from ..models.encoder import Encoder\n",  # relative
])
def test_checker_catches_an_upward_import(source):
    fake = _sources({
        "jadapt.layers.dense": source,
        "jadapt.models.encoder": "from jadapt.layers.dense import Dense\n",
    }, packages=())
    problems = upward_imports(fake)
    assert problems and "jadapt.layers.dense" in problems[0] and "a higher floor" in problems[0], problems


def test_checker_allows_downward_and_own_package_imports():
    fake = _sources({
        "jadapt.layers.dense": "from jadapt.layers.precision import check\nfrom jadapt import tree\n",
        "jadapt.layers.precision": "",
        "jadapt.tree": "",
        "jadapt.models.encoder": "from jadapt.layers.dense import Dense\nfrom jadapt.models.config import C\n",
        "jadapt.models.config": "",
    })
    assert upward_imports(fake) == []


def test_checker_keeps_packages_on_one_floor_apart():
    fake = _sources({"jadapt.adapters.bottleneck": "def f():\n    from jadapt.fusion.layer import FusionLayer\n",
                     "jadapt.fusion.layer": ""})
    problems = upward_imports(fake)
    assert problems and "another package on its own floor" in problems[0]
    allowed = {("jadapt.adapters", "jadapt.fusion"): "a reason"}
    assert upward_imports(fake, sideways=allowed) == []


def test_checker_counts_what_a_package_init_imports():
    """Importing ``jadapt.fusion.layer`` runs ``jadapt/fusion/__init__.py``: an eager import of a
    loader there drags the loader's floor into every importer of the layer."""
    fake = _sources({
        "jadapt.fusion": "from jadapt.fusion.setup import fuse\n",
        "jadapt.fusion.layer": "",
        "jadapt.fusion.setup": "from jadapt.checkpoint import load\n",
        "jadapt.checkpoint": "",
        "jadapt.models.encoder": "from jadapt.fusion.layer import FusionLayer\n",
    }, packages=("jadapt.fusion", "jadapt.checkpoint"))
    problems = upward_imports(fake)
    assert any("jadapt.models.encoder" in p and "through jadapt.fusion/__init__.py" in p for p in problems), problems


def test_checker_reports_unplaced_modules_and_honours_exceptions():
    fake = _sources({"jadapt.newpkg.thing": "", "jadapt.layers.dense": "from jadapt.newpkg.thing import x\n"})
    assert any("jadapt.newpkg.thing is on no floor" in p for p in upward_imports(fake))
    fake = _sources({"jadapt.layers.dense": "from jadapt.models.encoder import E\n", "jadapt.models.encoder": ""})
    assert upward_imports(fake, exceptions={("jadapt.layers.dense", "jadapt.models.encoder"): "why"}) == []
