"""docs/api.md's examples run as written (doctest), against a finished run of the quickstart, and the public
surface it names is each module's `__all__`."""

import ast
import doctest
import importlib
import os

from conftest import ROOT


def test_the_api_page_examples_run(tiny_run, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name the sample files and configs as a user in the repository would
    monkeypatch.syspath_prepend(str(ROOT))  # `from losses import ...`, as from the repository's root
    result = doctest.testfile(
        str(ROOT / "docs" / "api.md"),
        module_relative=False,
        globs={"run_dir": tiny_run},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=True,
    )
    assert result.attempted >= 25 and result.failed == 0, result


def module_files():
    for path in sorted((ROOT / "nikl_emotion").rglob("*.py")):
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), path


def test_every_module_names_its_public_surface_and_keeps_helpers_private():
    """`__all__` in each module with public names: every name it lists exists, and every top-level name defined
    without a leading underscore is listed (a helper's name starts with one)."""
    problems = []
    for module, path in module_files():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined = []
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                defined.append(node.name)
            elif isinstance(node, ast.Assign):
                defined += [t.id for t in node.targets if isinstance(t, ast.Name)]
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                defined.append(node.target.id)
        public = {name for name in defined if not name.startswith("_") and name not in ("logger", "__all__")}
        if not public:
            continue
        listed = importlib.import_module(module).__dict__.get("__all__")
        if listed is None:
            problems.append(f"{module}: no __all__")
            continue
        if missing := sorted(name for name in listed if not hasattr(importlib.import_module(module), name)):
            problems.append(f"{module}: __all__ names {missing}, which it does not define")
        if unlisted := sorted(public - set(listed)):
            problems.append(f"{module}: public but not in __all__ (make it _private or list it): {unlisted}")
    assert not problems, "\n".join(problems)


def test_the_package_root_exports_what_the_readme_uses():
    import nikl_emotion

    assert set(nikl_emotion.__all__) >= {"EmotionClassifier", "LABELS"}
    assert os.path.isfile(ROOT / "docs" / "api.md")
