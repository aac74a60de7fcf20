"""The DVC stages' code and params dependencies, derived from the code (issue 18): never typed by hand.

    python -m productgen.pipeline.dvc_deps            # what each stage depends on, and what dvc.yaml misses
    python -m productgen.pipeline.dvc_deps --check    # exit 1 naming each stage and file dvc.yaml lacks
    python -m productgen.pipeline.dvc_deps --write    # rewrite the deps / params lists of dvc.yaml
    python -m productgen.pipeline.dvc_deps --lock     # stages whose code or params differ from dvc.lock (needs DVC)

What a stage depends on, from its ``cmd`` (each ``&&`` part that runs ``productgen ...`` or ``python -m ...``):

* **code**: the static import closure (``ast``; imports inside functions included, ``if TYPE_CHECKING:`` blocks
  excluded) of what the command executes: the modules ``productgen`` imports before it dispatches (the CLI
  package, module-level imports only), the command's own function in its CLI module (the CLI modules are
  followed function by function: ``productgen train vae`` does not depend on ``productgen web``), every project
  module that function reaches (whole modules from there on), and the task registry's ``"module:function"``
  references of the stage's task (:mod:`productgen.tasks`: the builder for ``train``, the evaluator and model
  loaders for ``evaluate``), so ``train-vae`` depends on the VAE code and not on the translation code. Package
  ``__init__`` files of every module are included (Python runs them on import), and project files a module
  names by a path tail (``"serving" / "gan_pyfunc.py"``) too.
* **files read**: the ``--profile`` of each command (``flows/profiles/<name>.yaml``) and any project file a read
  parameter names (a style image given as a path, ``style.encoder_weights``, translation folders).
* **params**: the keys the code reads from the ``Params`` object, found by following it through the entry
  functions and the calls it is passed to: ``p.<section>.<field>`` is one key, ``p.<section>`` used as a whole
  is the whole section, a method of a section (``p.train.out_for``) is the fields it reads, and
  ``getattr(p, spec.section)`` is the task's section (:attr:`productgen.tasks.TaskSpec.section`). The same keys
  are listed for the profile, where it sets them.

Importable without DVC: only :func:`lock_drift` (``--lock``) imports it. The test ``tests/integration/
test_dvc_deps.py`` recomputes everything and fails naming the stage and the missing file.
"""

from __future__ import annotations

import argparse
import ast
import functools
import re
import shlex
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

PACKAGE = "productgen"
CODE_COMMENT = "# code: derived from the imports (python -m productgen.pipeline.dvc_deps --write); do not edit"
PARAMS_COMMENT = "# derived from the code's reads of params (python -m productgen.pipeline.dvc_deps --write)"
HOLDERS = frozenset({"p", "params"})  # the names a function calls its Params object (others: followed from calls)


# ----------------------------------------------------------------------------------------------------------------
# The project's modules


class Project:
    """The Python modules under ``<root>/src`` and their parsed syntax trees."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.src = self.root / "src"
        self.modules: dict[str, Path] = {}
        for f in sorted((self.src / PACKAGE).rglob("*.py")):
            if "__pycache__" in f.parts:
                continue
            parts = f.relative_to(self.src).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.modules[name] = f
        self._trees: dict[str, ast.Module] = {}
        self.imports_cache: dict[tuple[str, int, bool], list[Import]] = {}
        self.producers: set[tuple[str, str]] | None = None
        self.src_files: list[str] | None = None
        self.tails_cache: dict[str, set[str]] = {}

    def tree(self, module: str) -> ast.Module:
        if module not in self._trees:
            self._trees[module] = ast.parse(self.modules[module].read_text(encoding="utf-8"))
        return self._trees[module]

    def rel(self, module: str) -> str:
        return self.modules[module].relative_to(self.root).as_posix()

    def is_package(self, module: str) -> bool:
        return self.modules[module].name == "__init__.py"

    def parents(self, module: str) -> list[str]:
        parts = module.split(".")
        return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in self.modules]

    def function(self, module: str, name: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        for node in self.tree(module).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                return node
        return None


def _type_checking(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, into_functions: bool = True) -> Iterator[ast.AST]:
    """``ast.walk`` without ``if TYPE_CHECKING:`` bodies (and, unless ``into_functions``, without function bodies:
    what runs when the module is imported)."""
    stack = [node]
    while stack:
        n = stack.pop()
        yield n
        for child in ast.iter_child_nodes(n):
            if isinstance(n, ast.If) and _type_checking(n) and child in n.body:
                continue
            if not into_functions and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            stack.append(child)


@dataclass
class Import:
    module: str  # the project module imported
    names: dict[str, str] = field(default_factory=dict)  # local name -> attribute of that module (from-imports)


def _imports(project: Project, module: str, node: ast.AST, into_functions: bool = True) -> list[Import]:
    """The project modules ``node`` imports (``from pkg import mod`` names the submodule); memoised per node."""
    key = (module, id(node), into_functions)
    if key not in project.imports_cache:
        project.imports_cache[key] = _find_imports(project, module, node, into_functions)
    return project.imports_cache[key]


def _find_imports(project: Project, module: str, node: ast.AST, into_functions: bool) -> list[Import]:
    out: list[Import] = []
    pkg = module if project.is_package(module) else module.rpartition(".")[0]
    for n in _walk(node, into_functions):
        if isinstance(n, ast.Import):
            for a in n.names:
                if a.name.split(".")[0] == PACKAGE:
                    target = a.name
                    while target not in project.modules and "." in target:
                        target = target.rpartition(".")[0]
                    if target in project.modules:
                        imp = Import(target)
                        if a.asname:
                            imp.names[a.asname] = ""
                        out.append(imp)
        elif isinstance(n, ast.ImportFrom):
            if n.level:
                base = pkg.split(".")
                base = base[: len(base) - (n.level - 1)]
                source = ".".join(base + ([n.module] if n.module else []))
            else:
                source = n.module or ""
            if source.split(".")[0] != PACKAGE or source not in project.modules:
                continue
            imp = Import(source)
            for a in n.names:
                sub = f"{source}.{a.name}"
                if sub in project.modules:
                    out.append(Import(sub, {a.asname or a.name: ""}))
                else:
                    imp.names[a.asname or a.name] = a.name
            out.append(imp)
    return out


def _closure(project: Project, start: Iterable[str], into_functions: bool) -> set[str]:
    seen: set[str] = set()
    todo = list(start)
    while todo:
        m = todo.pop()
        if m in seen or m not in project.modules:
            continue
        seen.add(m)
        todo.extend(project.parents(m))
        todo.extend(i.module for i in _imports(project, m, project.tree(m), into_functions=into_functions))
    return seen


def module_level_closure(project: Project, start: Iterable[str]) -> set[str]:
    """What importing ``start`` executes: module-level imports, transitively, with the packages' ``__init__``."""
    return _closure(project, start, into_functions=False)


def full_closure(project: Project, start: Iterable[str]) -> set[str]:
    """Every module ``start`` may import, at module level or inside any function, transitively."""
    return _closure(project, start, into_functions=True)


def _is_cli(module: str) -> bool:
    return module == f"{PACKAGE}.cli" or module.startswith(f"{PACKAGE}.cli.")


def _referenced_names(node: ast.AST) -> set[str]:
    return {n.id for n in _walk(node) if isinstance(n, ast.Name)}


def command_closure(project: Project, module: str, func: str) -> set[str]:
    """The modules a CLI command's function reaches: CLI modules function by function, others whole."""
    whole: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [(module, func)]
    while todo:
        mod, name = todo.pop()
        if (mod, name) in seen:
            continue
        seen.add((mod, name))
        node = project.function(mod, name)
        if node is None:
            continue
        top_imports = _imports(project, mod, project.tree(mod), into_functions=False)
        refs = _referenced_names(node)
        for imp in _imports(project, mod, node):  # imports inside the function
            (todo.extend((imp.module, n) for n in imp.names.values() if n) if _is_cli(imp.module) else None)
            if not _is_cli(imp.module):
                whole.add(imp.module)
        for imp in top_imports:  # names of module-level imports the function uses
            for local, attr in imp.names.items():
                if local not in refs:
                    continue
                if _is_cli(imp.module):
                    todo.append((imp.module, attr))
                else:
                    whole.add(imp.module)
        for other in project.tree(mod).body:  # functions of the same module it calls
            if isinstance(other, (ast.FunctionDef, ast.AsyncFunctionDef)) and other.name in refs:
                todo.append((mod, other.name))
    return full_closure(project, whole) | {m for m, _ in seen if m in project.modules}


def data_files(project: Project, modules: Iterable[str]) -> set[str]:
    """Project files (not modules already in the closure) that the modules name by a path tail: string constants
    joined with ``/`` (``Path(__file__).parent / "serving" / "gan_pyfunc.py"``) that end a file path under src."""
    if project.src_files is None:
        files = [f.relative_to(project.root).as_posix() for f in project.src.rglob("*") if f.is_file()]
        project.src_files = [f for f in files if "__pycache__" not in f and ".egg-info" not in f]
    found: set[str] = set()
    for m in modules:
        if m not in project.tails_cache:
            tails = {t for n in _walk(project.tree(m)) if (t := _path_tail(n))}
            project.tails_cache[m] = {
                t for t in tails if ("/" in t or "." in t.rpartition("/")[2]) and not t.startswith("/")
            }
        for tail in project.tails_cache[m]:
            for f in project.src_files:
                if f.endswith("/" + tail) and (not f.endswith(".py") or "/" in tail):
                    found.add(f)
    return found


def _path_tail(n: ast.AST) -> str | None:
    if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Div):
        right = n.right.value if isinstance(n.right, ast.Constant) and isinstance(n.right.value, str) else None
        if right is None:
            return None
        left = _path_tail(n.left)
        return f"{left}/{right}" if left else right
    if isinstance(n, ast.Constant) and isinstance(n.value, str) and re.fullmatch(r"[\w.-]+", n.value):
        return n.value
    return None


# ----------------------------------------------------------------------------------------------------------------
# Which params a function reads


@dataclass
class ParamReads:
    keys: set[str] = field(default_factory=set)  # "section" (whole) or "section.field"
    dynamic: bool = False  # getattr(p, <not a constant>): the task's section

    def add(self, key: str) -> None:
        self.keys.add(key)


class ConfigModel:
    """The sections of ``Params`` and the fields / methods of each section's dataclass (from config.py's AST)."""

    def __init__(self, project: Project) -> None:
        tree = project.tree(f"{PACKAGE}.config")
        classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef)}
        self.sections: dict[str, str] = {}
        for n in classes["Params"].body:
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name):
                self.sections[n.target.id] = ast.unparse(n.annotation)
        self.fields: dict[str, set[str]] = {}
        self.methods: dict[str, dict[str, set[str]]] = {}
        for section, cls in self.sections.items():
            node = classes.get(cls)
            fields = {
                n.target.id
                for n in (node.body if node else [])
                if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
            }
            self.fields[section] = fields
            self.methods[section] = {
                n.name: {
                    a.attr
                    for a in ast.walk(n)
                    if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id == "self"
                }
                & fields
                for n in (node.body if node else [])
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
            }


class ParamsScanner:
    """Follows a ``Params`` object through functions: the attributes read off it and the calls it is passed to."""

    def __init__(self, project: Project) -> None:
        self.project = project
        self.config = ConfigModel(project)
        self.reads = ParamReads()
        self.unresolved: set[str] = set()
        self._seen: set[tuple[str, str, str]] = set()
        if project.producers is None:
            project.producers = self._producers()
        self.producers = project.producers

    def _producers(self) -> set[tuple[str, str]]:
        """Functions returning a Params object: annotated ``-> Params``, or returning a call to one (``_load``)."""
        found: set[tuple[str, str]] = set()
        defs = [
            (m, n)
            for m in self.project.modules
            for n in self.project.tree(m).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        ]
        for m, n in defs:
            if n.returns is not None and ast.unparse(n.returns).strip("'\"") == "Params":
                found.add((m, n.name))
        for _ in range(2):
            for m, n in defs:
                resolve = self._resolver(m, n)
                for r in ast.walk(n):
                    if isinstance(r, ast.Return) and isinstance(r.value, ast.Call) and resolve(r.value.func) in found:
                        found.add((m, n.name))
        return found

    def scan(self, module: str, func: str, holders: frozenset[str] = HOLDERS) -> None:
        key = (module, func, ",".join(sorted(holders)))
        if key in self._seen or module not in self.project.modules:
            return
        self._seen.add(key)
        node = self._find(module, func)
        if node is None:
            return
        parents: dict[ast.AST, ast.AST] = {}
        for n in _walk(node):
            for c in ast.iter_child_nodes(n):
                parents[c] = n
        resolve = self._resolver(module, node)
        names = set(holders)  # names holding a Params object
        aliases: dict[str, str] = {}  # names holding one section's config

        def is_replace(call: ast.AST) -> bool:
            f = call.func if isinstance(call, ast.Call) else None
            return (isinstance(f, ast.Attribute) and f.attr == "replace" and ast.unparse(f.value) == "dataclasses") or (
                isinstance(f, ast.Name) and f.id == "replace"
            )

        def is_params(e: ast.AST) -> bool:
            if isinstance(e, ast.Name):
                return e.id in names
            if isinstance(e, ast.Call):
                if is_replace(e):
                    return bool(e.args) and is_params(e.args[0])
                target = resolve(e.func)
                return target is not None and target in self.producers
            return False

        def section_of(e: ast.AST) -> str | None:
            if isinstance(e, ast.Attribute) and e.attr in self.config.sections and is_params(e.value):
                return e.attr
            if isinstance(e, ast.Name):
                return aliases.get(e.id)
            if isinstance(e, ast.Call) and is_replace(e) and e.args:
                return section_of(e.args[0])
            return None

        for _ in range(3):  # assignments: p = _load(...), p = for_task(p, t), e = p.evaluate, cfg = replace(e, ...)
            for n in _walk(node):
                if isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None:
                    targets = n.targets if isinstance(n, ast.Assign) else [n.target]
                    for t in targets:
                        if isinstance(t, ast.Name):
                            if is_params(n.value):
                                names.add(t.id)
                            elif (sec := section_of(n.value)) is not None:
                                aliases[t.id] = sec

        def used_whole(e: ast.AST) -> bool:
            """Whether the section object ``e`` is used as a whole (not only copied into a name or a Params)."""
            up = parents.get(e)
            if isinstance(up, (ast.Assign, ast.AnnAssign)) and all(
                isinstance(t, ast.Name) for t in (up.targets if isinstance(up, ast.Assign) else [up.target])
            ):
                return False  # an alias: its own uses count
            if isinstance(up, ast.Call) and is_replace(up) and up.args and up.args[0] is e:
                return used_whole(up)  # a modified copy: what happens to the copy counts
            if isinstance(up, ast.keyword):
                call = parents.get(up)
                if isinstance(call, ast.Call) and is_replace(call) and call.args and is_params(call.args[0]):
                    return False  # put back into a Params object (for_task)
            return True

        def rewritten_in_place(read: ast.Attribute, sec: str) -> bool:
            """``replace(e, out=e.out.replace("{task}", task))``: the field is read only to be written back into the
            same field of a copy (``for_task`` filling in folder names), which is not a use of its value."""
            fields = {read.attr} | self.config.methods[sec].get(read.attr, set())
            child: ast.AST = read
            up = parents.get(read)
            while up is not None:
                if isinstance(up, ast.keyword):
                    call = parents.get(up)
                    return (
                        up.arg in fields
                        and isinstance(call, ast.Call)
                        and is_replace(call)
                        and bool(call.args)
                        and section_of(call.args[0]) == sec
                    )
                if isinstance(up, (ast.stmt, ast.Lambda)):
                    return False
                child, up = up, parents.get(up)
            del child
            return False

        for n in _walk(node):
            sec = None
            if isinstance(n, ast.Attribute) and not (isinstance(n.ctx, ast.Store)):
                sec = section_of(n) if n.attr in self.config.sections else None
            elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load) and n.id in aliases:
                sec = aliases[n.id]
            if sec is not None:
                up = parents.get(n)
                if isinstance(up, ast.Attribute) and up.value is n and rewritten_in_place(up, sec):
                    continue
                if isinstance(up, ast.Attribute) and up.value is n:
                    if up.attr in self.config.fields[sec]:
                        self.reads.add(f"{sec}.{up.attr}")
                    elif up.attr in self.config.methods[sec] and self.config.methods[sec][up.attr]:
                        for f in self.config.methods[sec][up.attr]:
                            self.reads.add(f"{sec}.{f}")
                    else:
                        self.reads.add(sec)
                elif used_whole(n):
                    self.reads.add(sec)
                continue
            if not isinstance(n, ast.Call):
                continue
            args = list(n.args)
            if isinstance(n.func, ast.Name) and n.func.id == "getattr" and args and is_params(args[0]):
                if len(args) > 1 and isinstance(args[1], ast.Constant) and args[1].value in self.config.sections:
                    self.reads.add(str(args[1].value))
                else:
                    self.reads.dynamic = True
                continue
            if is_replace(n):
                continue
            passed = [i for i, a in enumerate(args) if is_params(a)]
            passed_kw = [k.arg for k in n.keywords if is_params(k.value)]
            if not passed and not passed_kw:
                continue
            target = resolve(n.func)
            callee = self._find(*target) if target else None
            if (target is None or callee is None) and isinstance(n.func, ast.Attribute):
                self.unresolved.add(f"{module}:{func} passes the params to {ast.unparse(n.func)}")
            if target is None or callee is None:
                continue
            pnames = [a.arg for a in callee.args.posonlyargs + callee.args.args]
            if pnames and pnames[0] in ("self", "cls"):
                pnames = pnames[1:]
            mapped = {pnames[i] for i in passed if i < len(pnames)} | {k for k in passed_kw if k}
            if mapped:
                self.scan(target[0], target[1], frozenset(mapped))

    def _find(self, module: str, func: str) -> ast.FunctionDef | ast.AsyncFunctionDef | None:
        if module not in self.project.modules:
            return None
        node = self.project.function(module, func)
        if node is None:  # a nested function: the outermost function holding it
            for top in self.project.tree(module).body:
                if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)) and any(
                    isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.name == func for n in ast.walk(top)
                ):
                    return top
        return node

    def _resolver(self, module: str, node: ast.AST) -> Any:
        names: dict[str, tuple[str, str]] = {}
        modules: dict[str, str] = {}
        for imp in _imports(self.project, module, self.project.tree(module), into_functions=False) + _imports(
            self.project, module, node
        ):
            for local, attr in imp.names.items():
                if attr:
                    names[local] = (imp.module, attr)
                else:
                    modules[local] = imp.module
        for top in self.project.tree(module).body:
            if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
                names.setdefault(top.name, (module, top.name))

        def resolve(f: ast.AST) -> tuple[str, str] | None:
            if isinstance(f, ast.Name):
                return names.get(f.id)
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in modules:
                return modules[f.value.id], f.attr
            return None

        return resolve


# ----------------------------------------------------------------------------------------------------------------
# Stages


@dataclass
class Command:
    """One ``productgen ...`` / ``python -m ...`` part of a stage's cmd, resolved."""

    entry: tuple[str, str] | None  # (module, function) the command runs
    task: str | None = None
    kind: str | None = None  # "train" | "evaluate" | other subcommand path
    profile: str | None = None
    params_file: str = "params.yaml"
    modules: set[str] = field(default_factory=set)  # python -m MODULE


@dataclass
class StageDeps:
    name: str
    code: list[str]  # project files, sorted
    params: dict[str, list[str]]  # params file -> keys (sections or section.field), sorted; params.yaml first
    tasks: list[str]


def _split_cmd(cmd: str | list[str]) -> list[list[str]]:
    text = " && ".join(cmd) if isinstance(cmd, list) else cmd
    parts: list[list[str]] = []
    for chunk in re.split(r"&&|;|\|\|", text):
        words = shlex.split(chunk)
        if words:
            parts.append(words)
    return parts


@functools.lru_cache(maxsize=1)
def _click_app() -> Any:
    import typer.main

    from productgen.cli import app

    return typer.main.get_command(app)


def parse_command(words: list[str], tasks: dict[str, Any]) -> Command | None:
    """Resolve ``productgen <sub> ... args`` to the function the CLI dispatches to (the real Typer app, parsed by
    click) and its task / profile; ``python -m <module> ...`` to that module."""
    import inspect

    prog = Path(words[0]).name
    if prog.startswith("python") and len(words) > 2 and words[1] == "-m":
        if words[2] in (PACKAGE, f"{PACKAGE}.cli"):
            words = [PACKAGE, *words[3:]]
        else:
            task = next((w for w in words[3:] if w in tasks), None)
            return Command(None, task=task, kind="module", modules={words[2]})
    elif prog != PACKAGE:
        return None
    group = _click_app()
    cmd: Any = group
    path: list[str] = []
    args = words[1:]
    while hasattr(cmd, "list_commands") and args:  # a group (Typer vendors its own click)
        sub = cmd.get_command(cmd.context_class(cmd), args[0])
        if sub is None:
            break
        path.append(args[0])
        cmd, args = sub, args[1:]
    if hasattr(cmd, "list_commands") or cmd.callback is None:
        return None
    ctx = cmd.make_context(" ".join([PACKAGE, *path]), list(args), resilient_parsing=True)
    fn = inspect.unwrap(cmd.callback)
    entry = (fn.__module__, fn.__qualname__.split(".")[0])
    kind = path[0] if path else None
    task = path[1] if kind == "train" and len(path) > 1 else ctx.params.get("task")
    params_file = ctx.params.get("params")
    return Command(
        entry,
        task=task if task in tasks else None,
        kind=kind,
        profile=ctx.params.get("profile"),
        params_file=str(params_file) if params_file else "params.yaml",
    )


def _task_refs(spec: Any, kind: str | None) -> list[str]:
    if kind == "train":
        refs = [spec.builder]
    elif kind == "evaluate":
        refs = [spec.evaluator, spec.predictor, spec.generator]
    else:  # anything else with a task argument (python -m ... <task>): every reference of the task
        refs = [spec.builder, spec.evaluator, spec.predictor, spec.generator]
    return [r for r in refs if r]


def _flatten(d: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(d, dict):
        for k, v in d.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, d


def _lookup(d: dict[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = d
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _narrow(keys: set[str]) -> set[str]:
    """Drop ``section.field`` keys whose whole section is read."""
    return {k for k in keys if "." not in k or k.split(".")[0] not in keys}


def _yaml(text: str) -> Any:
    return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - a safe loader


def _load_yaml(path: Path) -> dict[str, Any]:
    return (_yaml(path.read_text(encoding="utf-8")) or {}) if path.is_file() else {}


def _interpolate(value: str, params: dict[str, Any]) -> str:
    def sub(m: re.Match[str]) -> str:
        found, v = _lookup(params, m.group(1).strip())
        return str(v) if found else m.group(0)

    return re.sub(r"\$\{([^}]+)\}", sub, value)


def _out_paths(stage: dict[str, Any], params: dict[str, Any]) -> list[str]:
    paths: list[str] = []
    for key in ("outs", "metrics", "plots"):
        for o in stage.get(key) or []:
            paths.append(_interpolate(next(iter(o)) if isinstance(o, dict) else str(o), params))
    return paths


def derive(root: Path, dvc_yaml: Path | None = None) -> dict[str, StageDeps]:
    """Every stage's derived code and params dependencies (stages whose cmd runs no project command: none)."""
    root = root.resolve()
    project = Project(root)
    if str(project.src) not in sys.path:
        sys.path.insert(0, str(project.src))
    from productgen import tasks as task_registry
    from productgen.config import profile_path

    pipeline = _yaml((dvc_yaml or root / "dvc.yaml").read_text(encoding="utf-8"))
    params_yaml = _load_yaml(root / "params.yaml")
    stages: dict[str, dict[str, Any]] = pipeline.get("stages") or {}
    everyone_outs = [p for s in stages.values() if isinstance(s, dict) for p in _out_paths(s, params_yaml)]
    dvc_tracked = [f.with_suffix("").relative_to(root).as_posix() for f in root.glob("*.dvc")]
    base = module_level_closure(project, [f"{PACKAGE}.cli"])
    out: dict[str, StageDeps] = {}
    for name, stage in stages.items():
        if not isinstance(stage, dict) or "cmd" not in stage:
            continue
        commands = [c for w in _split_cmd(stage["cmd"]) if (c := parse_command(w, task_registry.TASKS))]
        if not commands:
            continue
        modules: set[str] = set()
        files: set[str] = set()
        reads: dict[str, set[str]] = {}
        stage_tasks: list[str] = []
        for c in commands:
            scanner = ParamsScanner(project)
            spec = task_registry.TASKS.get(c.task) if c.task else None
            if spec is not None and spec.name not in stage_tasks:
                stage_tasks.append(spec.name)
            refs = _task_refs(spec, c.kind) if spec else []
            if c.entry is not None:
                modules |= base | module_level_closure(project, [c.entry[0]]) | command_closure(project, *c.entry)
                scanner.scan(*c.entry)
            if c.modules:
                modules |= full_closure(project, c.modules)
                for m in c.modules:
                    for top in project.tree(m).body if m in project.modules else []:
                        if isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef)):
                            scanner.scan(m, top.name)
            for ref in refs:
                mod, func = ref.split(":")
                modules |= full_closure(project, [mod])
                scanner.scan(mod, func)
            keys = set(scanner.reads.keys)
            if scanner.reads.dynamic:
                keys |= {spec.section} if spec else set(scanner.config.sections)
            reads.setdefault(c.params_file, set()).update(keys)
            if c.profile:
                prof = profile_path(c.profile).as_posix()
                files.add(prof)
                reads.setdefault(prof, set()).update(keys)
        files |= {project.rel(m) for m in modules}
        files |= data_files(project, modules)
        # parameters naming project files (a style image path, encoder weights, image folders)
        merged = dict(params_yaml)
        named: set[str] = set()
        for pfile, keys in reads.items():
            content = _load_yaml(root / pfile)
            for key in keys:
                found, value = _lookup(content, key)
                if not found:
                    continue
                for _, v in _flatten(value):
                    if not isinstance(v, str) or not v or "{" in v or v.startswith(("/", "~")):
                        continue
                    path = (root / v).resolve()
                    if not path.exists() or root not in path.parents:
                        continue
                    rel = path.relative_to(root).as_posix()
                    owned = [o.rstrip("/") for o in everyone_outs + dvc_tracked]
                    if any(rel == o or rel.startswith(o + "/") or o.startswith(rel + "/") for o in owned):
                        continue  # data, an output, or a folder holding outputs
                    named.add(rel)
        # A run folder a profile names (train.out, evaluate.model) exists only where that run happened: depending on
        # it would make dvc.yaml differ between workspaces, so paths git ignores are outputs, not dependencies.
        files |= named - git_ignored(root, named)
        del merged
        params: dict[str, list[str]] = {}
        for pfile, keys in sorted(reads.items(), key=lambda kv: (kv[0] != "params.yaml", kv[0])):
            content = _load_yaml(root / pfile)
            present = {k for k in _narrow(keys) if _lookup(content, k)[0]}
            if present:
                params[pfile] = sorted(present)
        out[name] = StageDeps(name, sorted(files), params, stage_tasks)
    return out


def git_ignored(root: Path, paths: set[str]) -> set[str]:
    """The subset of ``paths`` (relative to ``root``) that git ignores; none outside a git work tree."""
    import subprocess

    if not paths:
        return set()
    try:
        done = subprocess.run(
            ["git", "-C", str(root), "check-ignore", "--stdin"],
            input="\n".join(sorted(paths)),
            capture_output=True,
            text=True,
            check=False,
        )
    except OSError:  # no git: nothing is known to be ignored
        return set()
    return (
        {line.strip() for line in done.stdout.splitlines() if line.strip()} & paths if done.returncode == 0 else set()
    )


# ----------------------------------------------------------------------------------------------------------------
# dvc.yaml: compare and rewrite


def _declared(stage: dict[str, Any], params_yaml: dict[str, Any]) -> tuple[set[str], dict[str, set[str]]]:
    deps = {_interpolate(str(d), params_yaml).rstrip("/") for d in stage.get("deps") or []}
    params: dict[str, set[str]] = {}
    for entry in stage.get("params") or []:
        if isinstance(entry, str):
            params.setdefault("params.yaml", set()).add(entry)
        elif isinstance(entry, dict):
            for pfile, keys in entry.items():
                params.setdefault(pfile, set()).update(keys or [])
    return deps, params


def _covered(path: str, declared: set[str]) -> bool:
    return any(path == d or path.startswith(d + "/") for d in declared)


def _param_covered(key: str, declared: set[str]) -> bool:
    parts = key.split(".")
    return any(".".join(parts[:i]) in declared for i in range(1, len(parts) + 1))


def missing(root: Path, derived: dict[str, StageDeps] | None = None) -> list[str]:
    """One line per stage and file (or params key) that dvc.yaml does not declare."""
    root = root.resolve()
    derived = derive(root) if derived is None else derived
    pipeline = _yaml((root / "dvc.yaml").read_text(encoding="utf-8"))
    params_yaml = _load_yaml(root / "params.yaml")
    problems: list[str] = []
    for name, d in derived.items():
        deps, params = _declared(pipeline["stages"][name], params_yaml)
        for f in d.code:
            if not _covered(f, deps):
                problems.append(f"stage {name}: missing code dependency {f}")
        for pfile, keys in d.params.items():
            for k in keys:
                if not _param_covered(k, params.get(pfile, set())):
                    problems.append(f"stage {name}: missing params dependency {pfile}:{k}")
    return problems


def extra(root: Path, derived: dict[str, StageDeps] | None = None) -> list[str]:
    """Code and params dependencies dvc.yaml declares that the code does not use (spurious re-runs)."""
    root = root.resolve()
    derived = derive(root) if derived is None else derived
    pipeline = _yaml((root / "dvc.yaml").read_text(encoding="utf-8"))
    params_yaml = _load_yaml(root / "params.yaml")
    problems: list[str] = []
    for name, d in derived.items():
        deps, params = _declared(pipeline["stages"][name], params_yaml)
        for f in sorted(deps):
            if _is_code_path(f) and f not in d.code:
                problems.append(f"stage {name}: declares {f}, which its command does not import or read")
        for pfile, keys in params.items():
            for k in sorted(keys):
                if k not in d.params.get(pfile, []):
                    problems.append(f"stage {name}: declares params {pfile}:{k}, which its code does not read")
    return problems


def _is_code_path(path: str) -> bool:
    return path.startswith(("src/", "flows/profiles/"))


STAGE_RE = re.compile(r"^  ([A-Za-z0-9_.-]+):\s*(#.*)?$")
KEY_RE = re.compile(r"^    ([a-z_]+):(.*)$")


def rewrite(text: str, derived: dict[str, StageDeps]) -> str:
    """``dvc.yaml`` with each derived stage's code deps and params replaced (everything else kept as written:
    comments, data deps, outs). Code deps follow the data deps under one comment line."""
    lines = text.splitlines()
    out: list[str] = []
    i, stage = 0, None
    in_stages = False
    while i < len(lines):
        line = lines[i]
        if line.startswith("stages:"):
            in_stages = True
        elif line and not line.startswith((" ", "#")):
            in_stages = False
        m = STAGE_RE.match(line) if in_stages else None
        if m:
            stage = m.group(1)
        k = KEY_RE.match(line) if in_stages and stage in derived else None
        if k and k.group(1) in ("deps", "params"):
            j = i + 1
            block: list[str] = []
            while j < len(lines) and (lines[j].startswith("      ") or not lines[j].strip()):
                if not lines[j].strip() and (j + 1 >= len(lines) or not lines[j + 1].startswith("      ")):
                    break
                block.append(lines[j])
                j += 1
            d = derived[str(stage)]
            out.append(f"    {k.group(1)}:")
            if k.group(1) == "deps":
                marker = next((i for i, b in enumerate(block) if b.strip() == CODE_COMMENT), len(block))
                block = block[:marker]  # below the comment: the generated list
                kept = [
                    b
                    for b in block
                    if b.strip().startswith("- ")
                    and not _is_code_path(b.strip()[2:].split("#")[0].strip())
                    and b.strip()[2:].split("#")[0].strip() not in d.code
                ]
                out.extend(kept)
                out.append(f"      {CODE_COMMENT}")
                out.extend(f"      - {f}" for f in d.code)
            else:
                out.append(f"      {PARAMS_COMMENT}")
                for pfile, keys in d.params.items():
                    if pfile == "params.yaml":
                        out.extend(f"      - {key}" for key in keys)
                    else:
                        out.append(f"      - {pfile}:")
                        out.extend(f"          - {key}" for key in keys)
            i = j
            continue
        out.append(line)
        i += 1
    result = "\n".join(out) + "\n"
    for name, d in derived.items():  # stages without a deps: / params: key yet
        if d.params and not re.search(rf"^  {re.escape(name)}:(?:\n    .*|\n\s*#.*)*?\n    params:", result, re.M):
            raise ValueError(f"stage {name}: add an empty 'params:' key to dvc.yaml, then --write again")
        if not re.search(rf"^  {re.escape(name)}:(?:\n    .*|\n\s*#.*|\n      .*)*?\n    deps:", result, re.M):
            raise ValueError(f"stage {name}: add a 'deps:' key to dvc.yaml, then --write again")
    return result


# ----------------------------------------------------------------------------------------------------------------
# The shipped champions: one frozen stage each


def champion_cards(root: Path) -> dict[str, dict[str, Any]]:
    import json

    folder = root / "champions"
    return {
        f.parent.name: json.loads(f.read_text(encoding="utf-8"))
        for f in sorted(folder.glob("*/card.json"))
        if (f.parent / "config.json").is_file()
    }


def champion_recipe(root: Path, card: dict[str, Any]) -> tuple[str, int | None]:
    """The profile a card names and the ``--max-steps`` to add when the profile does not train that many steps."""
    profile = str(card.get("profile", "")).split()[0] if card.get("profile") else "quick-cpu"
    from productgen.config import profile_path

    merged = _load_yaml(root / "params.yaml")
    found, steps = _lookup(_load_yaml(root / profile_path(profile)), "train.max_steps")
    if not found:
        steps = _lookup(merged, "train.max_steps")[1]
    want = card.get("steps")
    return profile, (int(want) if want is not None and want != steps else None)


def champion_stage(root: Path, task: str, card: dict[str, Any]) -> str:
    """The dvc.yaml text of ``champion-<task>`` (deps and params filled in by :func:`rewrite`)."""
    profile, steps = champion_recipe(root, card)
    more = f" --max-steps {steps}" if steps else ""
    params = _load_yaml(root / "params.yaml")  # literal paths: `dvc freeze / unfreeze` cannot rewrite ${...} stages
    prepared = _interpolate("${data.out}", params)
    summary = _interpolate("${validation.out}/summary.json", params)
    run, ev = f"artifacts/train/champion-{task}", f"artifacts/eval/champion-{task}"
    return "\n".join(
        [
            f"  champion-{task}:",
            "    frozen: true",
            "    cmd: >-",
            f"      rm -rf {run} {ev}",
            f"      && productgen train {task} --profile {profile}{more} --out {run} --no-track --quiet",
            f"      && productgen evaluate --task {task} --profile {profile} --model {run}/model",
            f"      --out {ev} --no-track --quiet",
            f"      && python -m productgen.pipeline.champion {task} --profile {profile} --model {run}/model",
            f"      --metrics {ev}/metrics.json",
            "    deps:",
            f"      - {prepared}",
            f"      - {summary}",
            "    params:",
            "    outs:",
            f"      - champions/{task}:        # git-tracked, so not cached by DVC; kept until the new one is complete",
            "          cache: false",
            "          persist: true",
            "",
        ]
    )


def champion_problems(root: Path) -> list[str]:
    """Shipped champions without their frozen stage, or whose stage trains another recipe than the card says."""
    root = root.resolve()
    stages = (_yaml((root / "dvc.yaml").read_text(encoding="utf-8")) or {}).get("stages") or {}
    problems = []
    for task, card in champion_cards(root).items():
        stage = stages.get(f"champion-{task}")
        if stage is None:
            problems.append(f"champions/{task}: no frozen stage champion-{task} (python -m {__name__} --write)")
            continue
        expected = _yaml(champion_stage(root, task, card))[f"champion-{task}"]
        if " ".join(str(stage.get("cmd", "")).split()) != " ".join(expected["cmd"].split()):
            problems.append(f"stage champion-{task}: its cmd is not the recipe of champions/{task}/card.json")
        if "${" in yaml.safe_dump(stage):
            problems.append(f"stage champion-{task}: uses ${{...}}, which `dvc unfreeze` cannot rewrite")
        if not stage.get("frozen"):
            problems.append(f"stage champion-{task}: not frozen (a plain `dvc repro` would retrain the champion)")
    return problems


def add_champion_stages(root: Path, text: str) -> str:
    """``dvc.yaml`` with a frozen stage for each shipped champion that has none (before the top-level plots)."""
    stages = (_yaml(text) or {}).get("stages") or {}
    new = [champion_stage(root, t, c) for t, c in champion_cards(root).items() if f"champion-{t}" not in stages]
    if not new:
        return text
    m = re.search(r"^(?:#.*\n)*[a-z]", text.split("stages:", 1)[1], re.M)
    cut = len(text.split("stages:", 1)[0]) + len("stages:") + m.start() if m else len(text)
    return text[:cut].rstrip("\n") + "\n\n" + "\n".join(new) + "\n" + text[cut:]


# ----------------------------------------------------------------------------------------------------------------
# dvc.lock: the code and params each stage was last run with (needs DVC)


def lock_drift(root: Path, frozen: bool | None = False) -> dict[str, list[str]]:
    """Stages whose code or params dependencies differ from ``dvc.lock``: ``{stage: [what differs]}``, with DVC's
    own hashing (each dep file's or directory's md5 against its lock entry, each params key's value against the
    locked one). Data and the outputs of other stages are left out: a fresh clone has none of them (``dvc status``
    reports them deleted), and ``dvc repro`` sees to them. ``frozen``: False: the stages ``dvc status`` checks;
    True: only the frozen ones (the shipped champions, whose deps ``dvc status`` does not look at); None: all."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo

    root = root.resolve()
    lock = _load_yaml(root / "dvc.lock").get("stages") or {}
    drift: dict[str, list[str]] = {}
    with Repo(str(root)) as repo:
        stages = list(repo.index.stages)
        data = [Path(o.fs_path).resolve() for s in stages for o in s.outs]

        def is_data(path: str) -> bool:
            p = Path(path).resolve()
            return any(p == q or q in p.parents for q in data)

        for stage in stages:
            if stage.is_data_source or not getattr(stage, "cmd", None):
                continue
            if frozen is not None and bool(stage.frozen) != frozen:
                continue
            name = stage.name  # the key of dvc.lock (addressing is relative to the working directory)
            if name not in lock:
                drift[name] = ["no dvc.lock entry"]
                continue
            lines: list[str] = ["command changed"] if stage.cmd_changed else []
            locked = {e["path"] for e in lock[name].get("deps") or []}
            declared = set()
            for dep in stage.deps:
                params = isinstance(dep, ParamsDependency)
                rel = Path(dep.fs_path).resolve().relative_to(root).as_posix()
                declared.add(rel)
                if not params and is_data(dep.fs_path):
                    continue
                if rel not in (set(lock[name].get("params") or {}) if params else locked):
                    lines.append(f"{rel} not in dvc.lock")
                    continue
                for _path, state in (dep.status() or {}).items():
                    if isinstance(state, dict):
                        lines.extend(f"{rel}:{k} {v}" for k, v in sorted(state.items()))
                    else:
                        lines.append(f"{rel} {state}")
            for path in sorted(locked - declared):
                if not is_data(str(root / path)):
                    lines.append(f"{path} no longer a dependency")
            if lines:
                drift[name] = lines
    return drift


def drift_lines(drift: dict[str, list[str]], frozen: bool = False, show: int = 3) -> list[str]:
    """One line per stage: which stage, the first differences, what to do."""
    out = []
    for stage, lines in drift.items():
        what = "; ".join(lines[:show]) + (f"; and {len(lines) - show} more" if len(lines) > show else "")
        if frozen:
            out.append(
                f"{stage}: code or params changed since the shipped champion was trained ({what}): retrain it "
                f"(python -m productgen.pipeline.champion {stage.removeprefix('champion-')} --reproduce) or keep it"
            )
        else:
            out.append(f"{stage}: differs from dvc.lock ({what}): run `dvc repro` and commit dvc.lock")
    return out


# ----------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path("."), help="the repository (default: .)")
    ap.add_argument("--check", action="store_true", help="exit 1 when dvc.yaml lacks a derived dependency")
    ap.add_argument("--write", action="store_true", help="rewrite dvc.yaml's deps and params lists")
    ap.add_argument("--lock", action="store_true", help="stages whose code or params differ from dvc.lock")
    ap.add_argument("--frozen", action="store_true", help="with --lock: the frozen stages (shipped champions)")
    args = ap.parse_args(argv)
    root: Path = args.root
    if args.lock:
        drift = lock_drift(root, frozen=args.frozen)
        for line in drift_lines(drift, frozen=args.frozen):
            print(line)
        if not drift:
            print("dvc.lock matches the code and params of every " + ("frozen " if args.frozen else "") + "stage")
        return 1 if drift else 0
    if args.write:
        path = root / "dvc.yaml"
        staged = add_champion_stages(root.resolve(), path.read_text(encoding="utf-8"))
        if staged != path.read_text(encoding="utf-8"):
            path.write_text(staged, encoding="utf-8")
    derived = derive(root)
    if args.write:
        new = rewrite(path.read_text(encoding="utf-8"), derived)
        if new != path.read_text(encoding="utf-8"):
            path.write_text(new, encoding="utf-8")
            print(f"{path}: deps and params rewritten for {len(derived)} stages")
        else:
            print(f"{path}: up to date")
        return 0
    problems = missing(root, derived) + champion_problems(root)
    if not args.check:
        for name, d in derived.items():
            tasks = f" (task {', '.join(d.tasks)})" if d.tasks else ""
            print(
                f"{name}{tasks}: {len(d.code)} files; params "
                + "; ".join(f"{f}: {', '.join(k)}" for f, k in d.params.items())
            )
        for line in extra(root, derived):
            print(line)
    for line in problems:
        print(line)
    return 1 if problems and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
