"""Heads are registered like backends: a head written and registered here (mean pooling over every token) trains,
saves, loads and exports through the pipeline's own functions, without a change anywhere else."""

import json

import numpy as np
import pytest
import torch
from conftest import ROOT, SAMPLE_DEV, SAMPLE_TEST
from torch import nn
from transformers import AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from nikl_emotion import EmotionClassifier
from nikl_emotion.backends.heads import HEADS, ClassifierHead, head_named, register_head, without_pooler
from nikl_emotion.base.errors import PipelineError
from nikl_emotion.base.fileio import read_probs
from nikl_emotion.training.config_checks import parse_config
from nikl_emotion.training.kfold import run_training


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
    assert "mean_pool" in (best / "README.md").read_text(encoding="utf-8")
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
