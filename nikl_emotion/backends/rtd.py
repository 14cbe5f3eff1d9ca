"""Replaced-token detection (ELECTRA, Clark et al. 2020), the `objective: rtd` of post-training.

A small generator (a masked LM a quarter of the discriminator's width by default, as in the paper's best
settings) fills the masked positions with tokens sampled from its predictions; the discriminator, the encoder that
is kept and fine-tuned, classifies every token of that corrupted text as original or replaced. Loss: the
generator's MLM loss + `discriminator_weight` (50 in the paper) x the discriminator's per-token loss. Both learn
from every step; the discriminator learns from all tokens, not only the 15% masked, which is why the paper's gains
over MLM at equal compute are largest for small models.

The generator shares the discriminator's embeddings (token, position and segment) and its output layer is those
token embeddings transposed, as in the paper. It holds them by reference, outside its registered modules, so a
checkpoint stores each weight once (safetensors refuses tensors stored twice) and resuming restores both models.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import ElectraConfig, ElectraForPreTraining, ElectraModel, PretrainedConfig
from transformers.modeling_outputs import MaskedLMOutput
from transformers.models.electra.modeling_electra import ElectraGeneratorPredictions

from nikl_emotion.base.errors import PipelineError

__all__ = [
    "generator_config",
    "check_rtd_backbone",
    "sample_tokens",
    "ReplacedTokenDetection",
]


def generator_config(discriminator: PretrainedConfig, size: float) -> ElectraConfig:
    """The generator's config: the discriminator's depth and embeddings, `size` of its width, heads and feed-forward
    (at least one head of at least 16 dimensions)."""
    heads = max(1, round(discriminator.num_attention_heads * size))
    hidden = max(16 * heads, round(discriminator.hidden_size * size / heads) * heads)
    values = {
        key: value
        for key, value in discriminator.to_dict().items()
        if key not in ("architectures", "model_type", "transformers_version")
    }
    values.update(
        hidden_size=hidden,
        num_attention_heads=heads,
        intermediate_size=max(hidden, round(discriminator.intermediate_size * size)),
        embedding_size=getattr(discriminator, "embedding_size", None) or discriminator.hidden_size,
    )
    return ElectraConfig(**values)


def check_rtd_backbone(config: PretrainedConfig, name: str) -> None:
    if config.model_type != "electra":
        raise PipelineError(
            f"objective: rtd trains an ELECTRA discriminator; {name} is a {config.model_type} model "
            "(use objective: mlm, or an ELECTRA backbone such as offline:electra-mini)"
        )


def sample_tokens(logits: torch.Tensor) -> torch.Tensor:
    """One token per row drawn from softmax(`logits`), by the Gumbel-max trick as in ELECTRA; an empty batch (no
    masked position in it) gives an empty result."""
    uniform = torch.rand_like(logits).clamp_(1e-9, 1 - 1e-9)
    return (logits - torch.log(-torch.log(uniform))).argmax(-1)


class ReplacedTokenDetection(torch.nn.Module):
    """Generator + discriminator trained together; `discriminator` is the model saved at the end."""

    def __init__(self, discriminator: ElectraForPreTraining, size: float = 0.25, discriminator_weight: float = 50.0):
        super().__init__()
        self.discriminator = discriminator
        self.discriminator_weight = discriminator_weight
        config = generator_config(discriminator.config, size)
        self.generator = ElectraModel(config)
        shared = discriminator.electra.embeddings
        del self.generator._modules["embeddings"]
        object.__setattr__(self.generator, "embeddings", shared)  # used, not owned: stored once, under discriminator
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_bias = torch.nn.Parameter(torch.zeros(config.vocab_size))
        self.config = discriminator.config  # what the Trainer reads (e.g. to count tokens)

    def generator_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        tokens = self.discriminator.electra.embeddings.word_embeddings.weight
        return F.linear(self.generator_predictions(hidden), tokens, self.generator_bias).float()

    def forward(self, input_ids, attention_mask=None, labels=None, num_items_in_batch=None, **optional):
        inputs = {"attention_mask": attention_mask}
        inputs |= {k: optional[k] for k in ("token_type_ids", "position_ids") if optional.get(k) is not None}
        selected = labels != -100
        # the generator's vocabulary layer runs on the masked positions only (the costly part of a small model)
        logits = self.generator_logits(self.generator(input_ids=input_ids, **inputs).last_hidden_state[selected])
        # normalised by the masked tokens of the whole optimizer step when the Trainer counts them (gradient
        # accumulation, several processes), else by this batch's
        count = torch.as_tensor(selected.sum() if num_items_in_batch is None else num_items_in_batch).clamp(min=1)
        generator_loss = F.cross_entropy(logits, labels[selected], reduction="sum") / count
        with torch.no_grad():
            original = torch.where(selected, labels, input_ids)
            corrupted = original.clone()
            corrupted[selected] = sample_tokens(logits)
            replaced = (corrupted != original).float()  # a sample equal to the original counts as original
        scores = self.discriminator(input_ids=corrupted, **inputs).logits
        attended = attention_mask.bool() if attention_mask is not None else torch.ones_like(selected)
        discriminator_loss = F.binary_cross_entropy_with_logits(scores[attended], replaced[attended])
        # the per-token mean of this batch, weighted by its share of the step's masked tokens (1 without
        # accumulation), so accumulated steps add up to the mean over the step as the generator's loss does
        share = selected.sum() / count
        loss = generator_loss + self.discriminator_weight * discriminator_loss * share
        return MaskedLMOutput(loss=loss)
