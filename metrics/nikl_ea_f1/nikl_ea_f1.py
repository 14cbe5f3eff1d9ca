"""`evaluate` metric module for NIKL emotion analysis: micro-F1 over the N×8 binary label matrix.

Loads offline from this folder: `evaluate.load("metrics/nikl_ea_f1")` (run from the project root, or with the
project on PYTHONPATH). The computation is `nikl_emotion.decisions.metrics.score`, the same function `score.py` uses.
"""

import datasets
import evaluate

from nikl_emotion.base.labels import LABELS
from nikl_emotion.decisions.metrics import score

_DESCRIPTION = (
    "Official NIKL 2023 emotion-analysis metric: micro-F1 over 8 binary labels (also macro and per-label F1)."
)
_KWARGS_DESCRIPTION = f"""
Args:
    predictions: list of 8-element 0/1 lists, labels in the order {", ".join(LABELS)}.
    references: list of 8-element 0/1 lists, same order.
Returns:
    micro_f1, macro_f1, num_rows, per_label (precision, recall, f1, support per label).
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class NiklEaF1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Value("int32"), length=len(LABELS)),
                    "references": datasets.Sequence(datasets.Value("int32"), length=len(LABELS)),
                }
            ),
        )

    def _compute(self, predictions, references):
        return score(references, predictions)
