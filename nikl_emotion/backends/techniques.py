"""Fine-tuning techniques beyond the reference recipe, each switched by a `TechniqueArguments` key and off by default:

- layer-wise learning-rate decay (`layerwise_lr_decay`; Howard & Ruder 2018, Sun et al. 2019): the head and pooler
  learn at the base rate, encoder layer i at base x decay^(L - i), the embeddings at base x decay^(L + 1);
- R-Drop (`rdrop_alpha`; Liang et al. 2021) for sigmoid outputs: each row runs twice with independent dropout, the
  loss is the mean of the two passes' losses plus alpha x half the symmetric KL between the two Bernoulli
  distributions of every label;
- multi-sample dropout (`multi_sample_dropout`; Inoue 2019): in training the head's logits are the mean over N
  dropout masks of the head's input (one encoder pass);
- adversarial training (`adversarial`): FGM (Miyato et al. 2017) moves the word embeddings by epsilon along their
  loss gradient; AWP (Wu et al. 2020) moves every weight matrix W by epsilon x ||W|| along its own gradient; the
  loss at the perturbed weights is back-propagated too and the weights restored before the optimizer step.

Weight averaging (EMA, SWA) is in averaging.py, pseudo-labels in pseudo_labels.py. None of these change the saved
checkpoint's format: a model trained with them loads and predicts like any other.
"""

from __future__ import annotations

import re

import torch
from torch import nn
from torch.nn import functional as F

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "parameter_depths",
    "layerwise_parameter_groups",
    "rdrop_divergence",
    "repeat_batch",
    "enable_multi_sample_dropout",
    "Adversary",
]


_DEFAULT_EPSILON = {"fgm": 1.0, "awp": 0.005}
_LAYER_INDEX = re.compile(r"\.(?:layer|layers|block|blocks)\.(\d+)\.")


# --- layer-wise learning-rate decay ---------------------------------------------------------------------------------


def parameter_depths(model: nn.Module) -> tuple[dict[str, int], int]:
    """Each trainable parameter's depth (0: embeddings, i + 1: encoder layer i, L + 1: everything above the layers,
    i.e. pooler and classification head) and L, the number of encoder layers. Names follow the Hugging Face
    families: `<base>.embeddings.*`, `<base>.encoder.layer.<i>.*`, then head and pooler."""
    names = [name for name, parameter in model.named_parameters() if parameter.requires_grad]
    indices = [int(match.group(1)) for name in names if (match := _LAYER_INDEX.search(name))]
    if not indices:
        raise PipelineError(
            f"layerwise_lr_decay: found no numbered encoder layers in {type(model).__name__}'s "
            "parameters (expected names like encoder.layer.0.*)"
        )
    layers = max(indices) + 1
    depths = {}
    for name in names:
        match = _LAYER_INDEX.search(name)
        if match:
            depths[name] = int(match.group(1)) + 1
        elif "embed" in name:
            depths[name] = 0
        else:
            depths[name] = layers + 1
    return depths, layers


def layerwise_parameter_groups(
    model: nn.Module,
    learning_rate: float,
    decay: float,
    weight_decay: float,
    decay_parameter_names: set[str] | list[str],
) -> list[dict]:
    """Optimizer parameter groups with one learning rate per depth (see `parameter_depths`), each split by whether
    the Trainer applies weight decay to it. The learning-rate scheduler scales every group's rate alike."""
    depths, layers = parameter_depths(model)
    decayed = set(decay_parameter_names)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if name not in depths:
            continue
        depth, with_decay = depths[name], name in decayed
        group = groups.setdefault(
            (depth, with_decay),
            {
                "params": [],
                "weight_decay": weight_decay if with_decay else 0.0,
                "lr": learning_rate * decay ** (layers + 1 - depth),
            },
        )
        group["params"].append(parameter)
    return [groups[key] for key in sorted(groups)]


# --- R-Drop ----------------------------------------------------------------------------------------------------------


def rdrop_divergence(logits_a: torch.Tensor, logits_b: torch.Tensor) -> torch.Tensor:
    """Half the symmetric KL divergence between the Bernoulli distributions sigmoid(a) and sigmoid(b), element-wise.

    KL(p||q) + KL(q||p) = (p - q)(logit p - logit q) for Bernoulli p, q: exact and stable for any logits."""
    return 0.5 * (torch.sigmoid(logits_a) - torch.sigmoid(logits_b)) * (logits_a - logits_b)


def repeat_batch(inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every row twice (first all rows, then all rows again): one forward pass gives two independent dropout masks
    per row."""
    return {name: torch.cat([value, value]) for name, value in inputs.items()}


# --- multi-sample dropout --------------------------------------------------------------------------------------------


def enable_multi_sample_dropout(model: nn.Module, samples: int) -> list:
    """Average the classification head over `samples` dropout masks while training (one encoder pass); evaluation is
    unchanged. Two head layouts exist among the families:

    - a linear `classifier` after the model's own `dropout` (BERT): that dropout becomes an identity and the
      classifier's forward hook applies `samples` masks of the same rate itself;
    - a head module with dropout inside (ELECTRA, RoBERTa, XLM-R): its forward hook runs it `samples` times.

    Returns the hook handles. The weights, their names and config.json stay as they were."""
    if samples <= 1:
        return []
    head = getattr(model, "classifier", None)
    if isinstance(head, nn.Linear) and isinstance(getattr(model, "dropout", None), nn.Dropout):
        rate = model.dropout.p
        model.dropout = nn.Identity()  # not a parameter: the state dict keeps its keys

        def linear_hook(module, args, output):
            if not module.training:
                return output
            features = args[0]
            return torch.stack([module.forward(F.dropout(features, rate, training=True)) for _ in range(samples)]).mean(
                0
            )

        return [head.register_forward_hook(linear_hook)]
    if isinstance(head, nn.Module) and any(isinstance(m, nn.Dropout) for m in head.modules()):

        def head_hook(module, args, kwargs, output):
            if not module.training:
                return output
            extra = [module.forward(*args, **kwargs) for _ in range(samples - 1)]
            return torch.stack([output, *extra]).mean(0)

        return [head.register_forward_hook(head_hook, with_kwargs=True)]
    raise PipelineError(
        f"multi_sample_dropout: {type(model).__name__} has no classification head with dropout "
        "(expected a `classifier` with a dropout before or inside it)"
    )


# --- adversarial training --------------------------------------------------------------------------------------------


class Adversary:
    """Perturbs weights along their current gradient (`attack`) and puts them back (`restore`)."""

    def __init__(self, method: str, epsilon: float | None = None):
        if method not in _DEFAULT_EPSILON:
            raise ValueError(f"adversarial method must be one of {', '.join(_DEFAULT_EPSILON)}, got {method!r}")
        self.method = method
        self.epsilon = _DEFAULT_EPSILON[method] if epsilon is None else float(epsilon)
        self.backup: list[tuple[torch.nn.Parameter, torch.Tensor]] = []

    def targets(self, model: nn.Module) -> list[torch.nn.Parameter]:
        if self.method == "fgm":
            return [model.get_input_embeddings().weight]
        return [p for name, p in model.named_parameters() if p.requires_grad and p.dim() > 1 and "weight" in name]

    @torch.no_grad()
    def attack(self, model: nn.Module) -> bool:
        """Move the targets; False (nothing moved) when no target has a non-zero gradient."""
        self.restore()
        for parameter in self.targets(model):
            grad = parameter.grad
            if grad is None:
                continue
            grad_norm = torch.linalg.vector_norm(grad.float())
            if not torch.isfinite(grad_norm) or grad_norm == 0:
                continue
            scale = self.epsilon if self.method == "fgm" else self.epsilon * torch.linalg.vector_norm(parameter.float())
            self.backup.append((parameter, parameter.detach().clone()))
            parameter.add_((grad.float() * (scale / grad_norm)).to(parameter.dtype))
        return bool(self.backup)

    @torch.no_grad()
    def restore(self) -> None:
        for parameter, original in self.backup:
            parameter.copy_(original)
        self.backup = []
