"""The layering users and contributors rely on, read from the source: the settings are a leaf any layer can read
without loading a model, and the names settings take are defined once."""

import ast

from conftest import ROOT


def package_imports() -> dict[str, set[str]]:
    """module -> the `nikl_emotion` modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    for path in (ROOT / "nikl_emotion").rglob("*.py"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        imported = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nikl_emotion"):
                imported.add(node.module)
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("nikl_emotion")}
        graph[name] = imported - {name, "nikl_emotion"}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for module in graph.get(todo.pop(), ()):
            if module not in seen:
                seen.add(module)
                todo.append(module)
    return seen


def test_the_settings_import_no_backend_decision_or_training_module():
    graph = package_imports()
    leaf = {"nikl_emotion.errors", "nikl_emotion.labels", "nikl_emotion.vocabulary"}
    for settings in ("nikl_emotion.config", "nikl_emotion.vocabulary"):
        assert reachable(graph, settings) <= leaf, f"{settings} reaches {sorted(reachable(graph, settings) - leaf)}"
    # and the checks that need backends sit above them, not inside
    assert "nikl_emotion.backbone" in graph["nikl_emotion.config_checks"]


def test_the_names_settings_take_are_the_names_the_implementations_know():
    from nikl_emotion import losses, vocabulary

    assert tuple(losses.LOSSES) == vocabulary.LOSS_NAMES
    from nikl_emotion.config import LossArguments, ModelArguments, TechniqueArguments

    assert LossArguments().loss in vocabulary.LOSS_NAMES and TechniqueArguments().adversarial in vocabulary.ADVERSARIAL_METHODS
    assert vocabulary.is_offline(ModelArguments().model_name_or_path)
