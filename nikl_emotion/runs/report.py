"""A run report a person can look at: report.md beside the run plus PNG plots (matplotlib, headless).

- per_label_f1.png: per-label F1 of each fold's validation split and of all OOF rows.
- threshold_curves.png: per label, OOF F1 against the threshold, the fitted threshold and 0.5 marked.
- label_counts.png: how many labels a row gets: gold vs predicted at 0.5 vs with the fitted thresholds.
- label_totals.png: per label, gold positives vs predicted positives (where the model over- or under-predicts).
"""

from __future__ import annotations

import os

import matplotlib

__all__ = [
    "write_report",
]


matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from nikl_emotion.base.config import DecisionArguments  # noqa: E402
from nikl_emotion.base.fileio import atomic_writer, write_text_atomic  # noqa: E402
from nikl_emotion.base.labels import LABELS, NUM_LABELS  # noqa: E402
from nikl_emotion.decisions.metrics import decide, score  # noqa: E402
from nikl_emotion.decisions.thresholds import DEFAULT_GRID  # noqa: E402
from nikl_emotion.folders.run_folder import PLOTS, RunFolder, plot_file  # noqa: E402, F401  (PLOTS re-exported)


def _save(fig, path: str) -> None:
    with atomic_writer(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def _label_f1_curve(probs: np.ndarray, gold: np.ndarray) -> np.ndarray:
    """F1 of one label at each grid threshold."""
    pred = probs[:, None] >= DEFAULT_GRID[None, :]
    tp = (pred & gold[:, None]).sum(axis=0)
    denominator = pred.sum(axis=0) + gold.sum()
    return np.where(denominator > 0, 2 * tp / np.maximum(denominator, 1), 0.0)


def _plot_per_label_f1(folds: list[dict], oof: dict, path: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    series = [(f"fold {f['fold']}", f) for f in folds] + [("OOF", oof)]
    width = 0.8 / len(series)
    x = np.arange(NUM_LABELS)
    for i, (name, result) in enumerate(series):
        values = [result["per_label"][label]["f1"] for label in LABELS]
        ax.bar(x + i * width - 0.4 + width / 2, values, width, label=name, color="black" if name == "OOF" else None)
    ax.set_xticks(x, LABELS, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("Per-label F1: each fold's validation split and all out-of-fold rows")
    ax.legend(ncol=len(series), fontsize=8, loc="upper right")
    _save(fig, path)


def _plot_threshold_curves(oof: np.ndarray, gold: np.ndarray, thresholds: np.ndarray, path: str) -> None:
    fig, axes = plt.subplots(2, 4, figsize=(14, 6), sharex=True, sharey=True)
    for j, ax in enumerate(axes.flat):
        ax.plot(DEFAULT_GRID, _label_f1_curve(oof[:, j], gold[:, j]), color="tab:blue")
        ax.axvline(0.5, color="grey", linestyle=":", label="0.5")
        ax.axvline(thresholds[j], color="tab:red", linestyle="--", label=f"fitted {thresholds[j]:.2f}")
        ax.set_title(f"{LABELS[j]} (support {int(gold[:, j].sum())})", fontsize=10)
        ax.legend(fontsize=7, loc="lower center")
        ax.set_ylim(0, 1)
    for ax in axes[1]:
        ax.set_xlabel("threshold")
    for ax in axes[:, 0]:
        ax.set_ylabel("OOF F1")
    fig.suptitle("Out-of-fold F1 against the threshold, per label (no fallback; the fitted thresholds include it)")
    _save(fig, path)


def _plot_label_counts(gold: np.ndarray, predictions: dict[str, np.ndarray], path: str) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    counts = {"gold": gold.sum(axis=1), **{name: pred.sum(axis=1) for name, pred in predictions.items()}}
    top = int(max(c.max() for c in counts.values()))
    bins = np.arange(0, top + 1)
    width = 0.8 / len(counts)
    for i, (name, per_row) in enumerate(counts.items()):
        share = np.array([(per_row == b).mean() for b in bins])
        ax.bar(bins + i * width - 0.4 + width / 2, share, width, label=name)
    ax.set_xticks(bins)
    ax.set_xlabel("labels per row")
    ax.set_ylabel("share of rows")
    ax.set_title("How many labels a row gets (out-of-fold)")
    ax.legend()
    _save(fig, path)


def _plot_label_totals(gold: np.ndarray, predictions: dict[str, np.ndarray], path: str) -> None:
    fig, ax = plt.subplots(figsize=(10, 4))
    series = {"gold": gold.sum(axis=0), **{name: pred.sum(axis=0) for name, pred in predictions.items()}}
    width = 0.8 / len(series)
    x = np.arange(NUM_LABELS)
    for i, (name, totals) in enumerate(series.items()):
        ax.bar(x + i * width - 0.4 + width / 2, totals, width, label=name)
    ax.set_xticks(x, LABELS, rotation=20)
    ax.set_yscale("log")
    ax.set_ylabel("rows (log scale)")
    ax.set_title("Positives per label: gold vs predicted (out-of-fold)")
    ax.legend()
    _save(fig, path)


def _f1_row(name: str, result: dict) -> str:
    cells = [f"{result['micro_f1']:.4f}", f"{result['macro_f1']:.4f}"] + [
        f"{result['per_label'][label]['f1']:.3f}" for label in LABELS
    ]
    return f"| {name} | " + " | ".join(cells) + " |"


def write_report(
    output_dir: str,
    summary: dict,
    *,
    gold: np.ndarray,
    oof: np.ndarray,
    thresholds: np.ndarray,
    decision_args: DecisionArguments,
) -> str:
    """Write report.md and the plots into `output_dir`; returns the report's path. `oof` holds the out-of-fold
    probabilities, `thresholds` the per-label ones fitted on them; `decision_args` the run's default threshold and
    fallback."""
    threshold, fallback = decision_args.threshold, decision_args.fallback_top_label
    gold = np.asarray(gold).astype(bool)
    at_default = decide(oof, threshold, fallback)
    tuned = decide(oof, thresholds, fallback)
    predictions = {f"predicted at {threshold}": at_default, "predicted, fitted thresholds": tuned}
    run = RunFolder(output_dir)
    _plot_per_label_f1(summary["folds"], summary["oof"], run.plot("per_label_f1"))
    _plot_threshold_curves(oof, gold, thresholds, run.plot("threshold_curves"))
    _plot_label_counts(gold, predictions, run.plot("label_counts"))
    _plot_label_totals(gold, predictions, run.plot("label_totals"))
    config = summary.get("config", {})
    sections = [
        [
            f"# Run report: {os.path.basename(os.path.abspath(output_dir))}",
            "",
            f"Model `{config.get('model_name_or_path')}`, input `{config.get('input_format')}`, "
            f"loss `{config.get('loss')}`, "
            f"{len(summary['folds'])} folds, {len(gold)} training rows.",
        ],
        _folds_section(summary, score(gold, at_default), score(gold, tuned), threshold),
        _thresholds_section(summary.get("thresholds", {}), gold, at_default, tuned, thresholds, threshold),
        *([_decision_section(summary["decision"])] if "decision" in summary else []),
        _predictions_section(gold, predictions),
    ]
    write_text_atomic(run.report, "\n\n".join("\n".join(section) for section in sections) + "\n")
    return run.report


def _image(title: str, name: str) -> str:
    return f"![{title}]({plot_file(name)})"


def _folds_section(summary: dict, oof_score: dict, tuned_score: dict, threshold: float) -> list[str]:
    return [
        "## Folds (validation split of each fold; OOF = all rows, each predicted by the fold that did not train on it)",
        "",
        "| | micro-F1 | macro-F1 | " + " | ".join(LABELS) + " |",
        "|---|" + "---|" * (NUM_LABELS + 2),
        *[_f1_row(f"fold {f['fold']}", f) for f in summary["folds"]],
        _f1_row(f"OOF at {threshold}", oof_score),
        _f1_row("OOF, fitted thresholds (in-sample)", tuned_score),
        "",
        "Best epoch per fold: "
        + ", ".join(
            f"fold {f['fold']}: {f.get('best_checkpoint')} of {f.get('epochs_run')} epochs" for f in summary["folds"]
        ),
        "",
        _image("per-label F1", "per_label_f1"),
    ]


def _thresholds_section(
    gain: dict, gold: np.ndarray, at_default: np.ndarray, tuned: np.ndarray, thresholds: np.ndarray, threshold: float
) -> list[str]:
    oof_score, per_label = score(gold, at_default), score(gold, tuned)["per_label"]
    return [
        "## Thresholds",
        "",
        f"OOF micro-F1 at {threshold}: **{gain.get('micro_f1_at_default', oof_score['micro_f1']):.4f}**; "
        "with per-label "
        f"thresholds fitted on the other folds' OOF rows and applied to each held-out fold: "
        f"**{gain.get('micro_f1_tuned_nested', float('nan')):.4f}** "
        "(the honest estimate of the gain; `thresholds.json` "
        "holds the thresholds fitted on all OOF rows).",
        "",
        "| label | threshold | precision | recall | F1 | support | predicted |",
        "|---|---|---|---|---|---|---|",
        *[
            f"| {label} | {thresholds[j]:.2f} | {per_label[label]['precision']:.3f} | "
            f"{per_label[label]['recall']:.3f} | "
            f"{per_label[label]['f1']:.3f} | {int(gold[:, j].sum())} | {int(tuned[:, j].sum())} |"
            for j, label in enumerate(LABELS)
        ],
        "",
        _image("threshold curves", "threshold_curves"),
    ]


def _decision_section(decision: dict) -> list[str]:
    """The candidate decision rules with their nested OOF scores, and the one submission.jsonl was made with."""
    rows = [
        f"| {'**' + c['name'] + '**' if c['name'] == decision['chosen'] else c['name']} | {c['description']} | "
        f"{c['micro_f1']:.4f} | {c['macro_f1']:.4f} | {c['gain']:+.4f} ± {c['gain_se']:.4f} |"
        for c in decision["candidates"]
    ]
    return [
        "## Decision rule (how the folds' probabilities become submission.jsonl)",
        "",
        f"`decision: {decision['mode']}` → **{decision['chosen']}** "
        "(saved as `decision.json`; `inference.py --run` and "
        f"`ensemble.py --decision` reuse it). Scores: {decision['estimate']}.",
        "",
        f"| rule | what | nested OOF micro-F1 | macro-F1 | gain over {decision['candidates'][0]['name']} ± s.e. |",
        "|---|---|---|---|---|",
        *rows,
    ]


def _predictions_section(gold: np.ndarray, predictions: dict[str, np.ndarray]) -> list[str]:
    def share(matrix: np.ndarray, count: int) -> str:  # rows with `count` labels (3 = three or more)
        return f"{np.mean(np.minimum(matrix.sum(axis=1), 3) == count):.3f}"

    return [
        "## Predictions vs gold",
        "",
        "| labels per row | " + " | ".join(["gold", *predictions]) + " |",
        "|---|" + "---|" * (len(predictions) + 1),
        *[
            f"| {b}{'+' if b == 3 else ''} | " + " | ".join(share(m, b) for m in [gold, *predictions.values()]) + " |"
            for b in range(4)
        ],
        "",
        _image("labels per row", "label_counts"),
        "",
        _image("positives per label", "label_totals"),
    ]
