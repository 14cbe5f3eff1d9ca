"""The architecture users and contributors rely on, read from the source and exercised: the layers and their
imports, the settings a leaf any layer can read, one settings object per program, no function over six parameters
or sixty lines, one word per concept (a backend trains, a runtime predicts), heads registered like backends (a head
written here trains, saves, loads and exports), the public surface of each module named in `__all__`, and only the
commands print."""

import ast
import functools
import importlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ONE_FOLD, ROOT, SAMPLE_DEV, SAMPLE_TEST
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.heads import HEADS, ClassifierHead, head_named, register_head, without_pooler
from nikl_emotion.backends.losses import (
    LOSSES,
    Loss,
    LossKey,
    LossParameterError,
    MultiLabelLoss,
    register_loss,
    smooth_targets,
)
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training


@functools.cache
def package_trees() -> tuple[tuple[Path, ast.Module], ...]:
    """Every module of the package, parsed once for all the checks below: (path, syntax tree)."""
    paths = sorted((ROOT / "nikl_emotion").rglob("*.py"))
    return tuple((path, ast.parse(path.read_text(encoding="utf-8"))) for path in paths)


def package_imports() -> dict[str, set[str]]:
    """module -> the `nikl_emotion` modules it imports, at module level or inside functions."""
    graph: dict[str, set[str]] = {}
    names = {_module_name(path) for path, _ in package_trees()}
    for path, tree in package_trees():
        name = _module_name(path)
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("nikl_emotion"):
                imported.add(node.module)
                # `from nikl_emotion.backends import rtd` imports the module rtd
                imported |= {f"{node.module}.{alias.name}" for alias in node.names} & names
            elif isinstance(node, ast.Import):
                imported |= {alias.name for alias in node.names if alias.name.startswith("nikl_emotion")}
        graph[name] = imported - {name, "nikl_emotion"}
    return graph


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


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
    leaf = {"nikl_emotion.base.errors", "nikl_emotion.base.labels", "nikl_emotion.base.vocabulary"}
    for settings in ("nikl_emotion.base.config", "nikl_emotion.base.vocabulary"):
        assert reachable(graph, settings) <= leaf, f"{settings} reaches {sorted(reachable(graph, settings) - leaf)}"
    # and the checks that need backends sit above them, not inside
    assert "nikl_emotion.backends.registry" in graph["nikl_emotion.training.config_checks"]


def test_the_names_settings_take_are_the_names_the_implementations_know():
    from nikl_emotion.backends import losses
    from nikl_emotion.base import vocabulary

    assert tuple(losses.LOSSES)[:3] == ("bce", "focal", "asl")  # the registry is where loss names live
    from nikl_emotion.base.config import LossArguments, ModelArguments, TechniqueArguments

    assert LossArguments().loss in losses.LOSSES and TechniqueArguments().adversarial in vocabulary.ADVERSARIAL_METHODS
    assert vocabulary.is_offline(ModelArguments().model_name_or_path)


BACKEND_MODULES = {
    "nikl_emotion.base.vocabulary",
    "nikl_emotion.backends.registry",
    "nikl_emotion.backends.fold_backend",
    "nikl_emotion.backends.ngram",
    "nikl_emotion.backends.encoder_backend",
    "nikl_emotion.backends.decoder_backend",
    "nikl_emotion.backends.classifier",
}


def test_no_backend_type_branch_outside_the_backend_modules():
    """Programs ask a backend for what it can do (`backend_for(name).supports_techniques`,
    `.supports_multi_process`, its `prepare` and `train_fold`), never which backend it is: a new backend is one new
    module listed in backends/registry.py."""
    type_tests = {"is_ngram", "is_ngram_folder", "NGRAM_PREFIX", "NgramClassifier", "train_ngram", "train_ngram_fold"}
    found = []
    for path, tree in package_trees():
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        if module in BACKEND_MODULES:
            continue
        for node in ast.walk(tree):
            name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
            if name in type_tests:
                found.append(f"{module}:{node.lineno} {name}")
    assert not found, found


def test_every_name_is_trained_by_one_backend_that_accepts_it():
    from nikl_emotion.backends.registry import BACKENDS, backend_for

    assert backend_for("ngram:tfidf").name == "ngram" and not backend_for("ngram:tfidf").supports_techniques
    assert (
        backend_for("offline:electra-tiny").name == "encoder"
        and backend_for("klue/roberta-large").supports_multi_process
    )
    assert BACKENDS[-1].matches("anything/else")  # the encoder takes every name no other backend claims


LAYERS = ("base", "folders", "text", "decisions", "backends", "runs", "training", "serving", "commands")


def layer_of(module: str) -> int:
    """The layer index of a module (`nikl_emotion.<layer>.<module>`); the package's own __init__ and __main__ sit
    above every layer."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 2 and parts[1] in LAYERS else len(LAYERS)


def test_each_layer_imports_only_its_own_and_the_layers_below():
    """The subpackages are the architecture (docs/architecture.md): base, folders, text, decisions, backends, runs,
    training, commands; an import that climbs, even inside a function, is a design error to fix, not to allow."""
    graph = package_imports()
    assert set(LAYERS) <= {module.split(".")[1] for module in graph if module.count(".") >= 2}
    climbing = [
        f"{module} -> {target}"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not climbing, climbing
    flat = [
        path.name for path in (ROOT / "nikl_emotion").glob("*.py") if path.name not in ("__init__.py", "__main__.py")
    ]
    assert not flat, f"modules outside the layers: {flat}"


def test_the_package_has_no_import_cycles():
    """Every `nikl_emotion` import (module level or inside functions) points one way: no module needs a module
    that needs it back."""
    graph = package_imports()
    assert "nikl_emotion.backends.export" in graph["nikl_emotion.commands.export"]

    state: dict[str, str] = {}  # "open" while on the current path, "done" once every path from it is checked
    cycles: list[list[str]] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles[:3]}"


def test_no_function_is_longer_than_sixty_lines():
    long = []
    for path, tree in package_trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(
                    f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
                )
    assert not long, long


def test_no_function_takes_more_than_six_parameters():
    """Settings travel as one object (`RunSettings`, `DistillSettings`, `PostTrainSettings`, `PredictionFiles`,
    `DecisionRule`), not one argument each; `self`, `cls`, `*args` and `**kwargs` are not counted. A dataclass's
    generated constructor is not a function written here."""
    many = []
    for path, tree in package_trees():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                arguments = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
                named = [a.arg for a in arguments if a.arg not in ("self", "cls")]
                if len(named) > 6:
                    many.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({len(named)} parameters)")
    assert not many, many


def test_a_program_is_handed_one_settings_object():
    """Each program's parser returns one frozen settings object, and the backends are given it with the fold."""
    import dataclasses
    import inspect

    from nikl_emotion.backends.fold_backend import FoldBackend
    from nikl_emotion.base.config import DistillSettings, PostTrainSettings, RunSettings
    from nikl_emotion.training import config_checks, distillation, kfold, post_training

    for settings_class in (RunSettings, DistillSettings, PostTrainSettings):
        assert settings_class.__dataclass_params__.frozen
    assert [f.name for f in dataclasses.fields(RunSettings)] == [
        "model", "data", "folds", "stopping", "budget", "decision", "loss", "techniques", "training"
    ]  # fmt: skip
    assert inspect.signature(config_checks.parse_config).return_annotation in ("RunSettings", RunSettings)
    assert inspect.signature(distillation.parse_distill_config).return_annotation in (
        "DistillSettings",
        DistillSettings,
    )
    assert inspect.signature(post_training.parse_post_train_config).return_annotation in (
        "PostTrainSettings",
        PostTrainSettings,
    )
    assert list(inspect.signature(kfold.run_training).parameters) == ["settings"]
    assert list(inspect.signature(FoldBackend.train_fold).parameters) == ["self", "settings", "data", "folder"]
    # one `train_fold` per meaning: the backends' method; the K-fold loop and the programs call it
    defined = [
        f"{path.relative_to(ROOT)}:{node.name}"
        for path, tree in package_trees()
        for node in tree.body
        if isinstance(node, ast.FunctionDef) and node.name == "train_fold"
    ]
    assert not defined, defined


def test_backend_names_only_what_trains_a_fold():
    """One word per concept: a *backend* trains a fold (`FoldBackend`, listed in the registry); what turns a batch
    into logits at prediction time is a *runtime* (`classifier.Runtime`: `TorchRuntime`, `OnnxRuntime`, the n-gram
    member's `NgramRuntime`)."""
    from nikl_emotion.backends import classifier
    from nikl_emotion.backends.registry import BACKENDS

    trainers = {type(backend).__name__ for backend in BACKENDS} | {"FoldBackend"}
    named = [
        f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"
        for path, tree in package_trees()
        for node in ast.walk(tree)
        if isinstance(node, ast.ClassDef) and "Backend" in node.name and node.name not in trainers
    ]
    assert not named, named
    assert {"Runtime", "TorchRuntime", "OnnxRuntime"} <= set(vars(classifier))
    # capabilities say what they enable, never what a backend is not: yes/no facts, and the programs' abilities as
    # the object the program uses, or None
    from nikl_emotion.backends.fold_backend import FoldBackend

    capabilities = [name for name in vars(FoldBackend) if name.startswith("supports_")]
    assert len(capabilities) >= 4
    # every question a program may ask is declared on the base, answered "no" there: a backend only says yes
    for backend in BACKENDS:
        for cls in type(backend).__mro__[:-1]:
            asked = {name for name in vars(cls) if name.startswith("supports_")} | (set(vars(cls)) & set(ABILITIES))
            assert asked <= set(vars(FoldBackend)), (cls.__name__, asked - set(vars(FoldBackend)))
    assert not any(getattr(FoldBackend, name) for name in capabilities)
    for backend in BACKENDS:
        assert all(isinstance(getattr(backend, name), bool) for name in capabilities), backend.name
        for ability, kind in ABILITIES.items():
            offered = getattr(backend, ability)()
            assert offered is None or isinstance(offered, kind), (backend.name, ability)
    from nikl_emotion.backends.registry import backend_for

    encoder = backend_for("offline:electra-tiny")
    assert all(getattr(encoder, ability)() is not None for ability in ABILITIES)
    assert all(getattr(backend_for("ngram:tfidf"), ability)() is None for ability in ABILITIES)


def _abilities() -> dict:
    from nikl_emotion.backends.fold_backend import CostMeter, FoldBackend, OnnxExporter, PostTrainer, SearchTrials

    return {
        "search_trials": SearchTrials,
        "post_trainer": PostTrainer,
        "student": FoldBackend,
        "onnx_exporter": OnnxExporter,
        "cost_meter": CostMeter,
    }


ABILITIES = _abilities()

# the modules of one backend (its model, trainer and abilities' objects): a program reaches them through the
# backend object it is given (registry.backend_for, checkpoint_backend), never by importing them
BACKEND_INTERNALS = {
    f"nikl_emotion.backends.{name}"
    for name in (
        "encoder_backend",
        "decoder_backend",
        "ngram",
        "backbone",
        "emotion_trainer",
        "encoder_search",
        "encoder_cost",
        "masked_lm",
        "rtd",
        "onnx_export",
        "techniques",
        "averaging",
    )
}


def test_no_program_imports_a_backends_internals():
    """hp search, post-training, distillation, export and the fold loop ask their backend object for what they
    need (`search_trials()`, `post_trainer()`, `student()`, `onnx_exporter()`, `prepare`, `train_fold`): no module
    outside `backends/` imports one backend's modules, so a new backend that offers an ability gets its own code."""
    graph = package_imports()
    reaching = {
        f"{module} -> {target}"
        for module, targets in graph.items()
        if not module.startswith("nikl_emotion.backends.")
        for target in targets & BACKEND_INTERNALS
    }
    assert not reaching, sorted(reaching)
    assert all(module in graph for module in BACKEND_INTERNALS)  # each name is a module that exists


def test_only_the_commands_print():
    """Below `commands/` the package logs (`logging`, rank-aware through `cli.configure_logging`); what a user asked
    for (tables, paths) is printed by the command that was asked."""
    printing = [
        f"{path.relative_to(ROOT)}:{node.lineno}"
        for path, tree in package_trees()
        if "commands" not in path.parts and path.name != "__main__.py"
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]
    assert not printing, printing


# a head registered in a test (heads are registered like backends)


class MeanPoolForSequenceClassification(PreTrainedModel):
    config_class = PretrainedConfig
    base_model_prefix = "backbone"
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, config: PretrainedConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        self.backbone = backbone if backbone is not None else AutoModel.from_config(config, **without_pooler(config))
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        states = self.backbone(**inputs, **kwargs).last_hidden_state
        weights = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


class MeanPoolHead(ClassifierHead):
    name = "mean_pool"

    def build(self, model_name_or_path, config, **loading):
        backbone = AutoModel.from_pretrained(model_name_or_path, config=config, **without_pooler(config), **loading)
        return MeanPoolForSequenceClassification(backbone.config, backbone).to(backbone.dtype)

    def load(self, folder, config, **kwargs):
        return MeanPoolForSequenceClassification.from_pretrained(
            folder, config=config, output_loading_info=True, **kwargs
        )


@pytest.fixture
def mean_pool_head():
    head = register_head(MeanPoolHead())
    yield head
    del HEADS[head.name]


def test_a_head_registered_in_a_test_trains_saves_loads_and_exports(mean_pool_head, tmp_path):
    out = tmp_path / "run"
    quick = ["--num_folds", "2", "--fold", "0", "--num_train_epochs", "3", "--early_stopping_patience", "0"]
    config = [str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out), *quick]
    run_training(parse_config([*config, "--classifier_head", "mean_pool"]))
    best = out / "fold_0" / "best"
    saved = json.loads((best / "config.json").read_text(encoding="utf-8"))
    assert saved["classifier_head"] == "mean_pool" and saved["architectures"] == ["MeanPoolForSequenceClassification"]
    assert json.loads((best / "preprocessing.json").read_text(encoding="utf-8"))["classifier_head"] == "mean_pool"
    card = (best / "README.md").read_text(encoding="utf-8")
    # the card tells how to load this head, not another head's story (nor transformers' pipeline)
    assert "head is `mean_pool`, a class of the nikl-emotion package" in card
    assert "target_pool" not in card and 'pipeline("text-classification"' not in card
    # loaded back through the registry, it predicts the test file exactly as its fold did
    classifier = EmotionClassifier.from_pretrained(best, device="cpu")
    assert isinstance(classifier.model, MeanPoolForSequenceClassification)
    np.testing.assert_allclose(
        classifier.predict_proba(SAMPLE_TEST), read_probs(out / "fold_0" / "test_probs.jsonl")[1], atol=1e-5
    )
    pytest.importorskip("onnxruntime")
    from nikl_emotion.backends.export import export_checkpoint

    export_checkpoint(str(best), str(tmp_path / "onnx"))
    onnx = EmotionClassifier.from_pretrained(tmp_path / "onnx")
    assert np.abs(onnx.predict_proba(SAMPLE_DEV) - classifier.predict_proba(SAMPLE_DEV)).max() <= 1e-5
    # mean pooling is not the first token: the same weights under the cls reading give other logits
    with torch.no_grad():
        batch = {"input_ids": torch.tensor([[2, 100, 200, 3]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
        first = classifier.model.classifier(classifier.model.backbone(**batch).last_hidden_state[:, 0])
        assert not torch.allclose(classifier.model(**batch).logits, first)


def test_an_unregistered_head_cannot_reach_the_model_builder(tmp_path):
    assert "mean_pool" not in HEADS  # the fixture's head is gone with its test
    with pytest.raises(PipelineError, match="classifier_head: 'mean_pool' is not cls or target_pool"):
        head_named("mean_pool")
    with pytest.raises(PipelineError, match="classifier_head: 'mean_pool' is not cls or target_pool"):
        parse_config(
            [str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(tmp_path), "--classifier_head", "mean_pool"]
        )
    with pytest.raises(ValueError, match="a head needs a name of its own"):
        register_head(type(head_named("cls"))())  # a second `cls`


def module_trees():
    for path, tree in package_trees():
        yield ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"), tree


def test_every_module_names_its_public_surface_and_keeps_helpers_private():
    """`__all__` in each module with public names: every name it lists exists, and every top-level name defined
    without a leading underscore is listed (a helper's name starts with one)."""
    problems = []
    for module, tree in module_trees():
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


class SquaredError(MultiLabelLoss):
    """scale * (sigmoid(x) - y)^2: a loss the package does not ship, with a parameter of its own."""

    calls = 0

    def __init__(self, scale: float = 1.0, **common):
        super().__init__(**common)
        if not scale > 0:
            raise LossParameterError("scale", "must be > 0", scale)
        self.scale = scale

    def forward(self, logits, targets):
        SquaredError.calls += 1
        loss = (
            self.scale * (torch.sigmoid(logits) - smooth_targets(targets.to(logits.dtype), self.label_smoothing)) ** 2
        )
        return {"none": loss, "mean": loss.mean(), "sum": loss.sum()}[self.reduction]


class Squared(Loss):
    name, loss_class = "squared", SquaredError
    keys = (LossKey("squared_scale", "scale", 1.0, "the squared error's scale (> 0)", (0.5, 2.0)),)


@pytest.fixture
def squared_loss():
    loss = register_loss(Squared())
    yield loss
    del LOSSES[loss.name]


def test_a_loss_registered_in_a_test_brings_its_key_its_checks_and_its_search_space_and_trains(squared_loss, tmp_path):
    import optuna

    out = tmp_path / "run"
    config = [str(ROOT / "configs" / "quickstart.yaml"), "--output_dir", str(out), "--loss", "squared"]
    # its key is a config key like the built-in losses' own, checked by its class with the key's name
    assert parse_config([*config, *ONE_FOLD]).loss.squared_scale == 1.0
    with pytest.raises(PipelineError, match=r"squared_scale: must be > 0, got -1"):
        parse_config([*config, *ONE_FOLD, "--squared_scale", "-1"])
    # the search draws it in its range (a trial's loss keys, not TrainingArguments)
    assert squared_loss.suggest(optuna.trial.FixedTrial({"squared_scale": 1.5})) == {"squared_scale": 1.5}
    # a fold trains with it, and the run's resolved config records it
    SquaredError.calls = 0
    run_training(parse_config([*config, *ONE_FOLD, "--squared_scale", "3"]))
    assert SquaredError.calls > 0 and (out / "fold_0" / "best" / "model.safetensors").exists()
    resolved = (out / "config.yaml").read_text(encoding="utf-8")
    assert "loss: squared" in resolved and "squared_scale: 3.0" in resolved
    # the built-in losses keep their keys, and a key no registered loss has is still refused
    assert parse_config([*config, *ONE_FOLD, "--loss", "focal", "--focal_gamma", "3"]).loss.focal_gamma == 3.0
    with pytest.raises(PipelineError, match="unknown key 'cubed_scale'"):
        parse_config([*config, *ONE_FOLD, "--cubed_scale", "3"])
