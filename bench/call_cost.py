"""What one forward call costs on this CPU beyond its padded tokens, in tokens: the `call_tokens` that
`text.batching.batch_starts` cuts a CPU's sorted rows by (issue 47). Not a timed test.

    python bench/call_cost.py [--checkpoint RUN/fold_0/best] [--size base|large] [--repeats 5]

Times the forward pass of a checkpoint (or a random-weight model at a hub model's real size, bench/onnx_speed.py's
`--size`) over batches of n rows x L tokens, n in 1..32 and L in 16..128, and fits time = a + b * n * L by least
squares: a is the call's fixed cost, b a padded token's, a / b the call in tokens. Prints the fit and how far the
worst shape lies from it.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
ROWS, WIDTHS = (1, 2, 4, 8, 16, 32), (16, 32, 64, 128)


def model_and_vocabulary(args) -> tuple[torch.nn.Module, int]:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    if args.checkpoint:
        from nikl_emotion import EmotionClassifier

        classifier = EmotionClassifier.from_pretrained(args.checkpoint, device="cpu")
        return classifier.model, classifier.tokenizer.vocab_size
    from onnx_speed import REAL_SIZES

    family, dims = REAL_SIZES[args.size]
    config = AutoConfig.for_model(family, num_labels=8, **dims)
    return AutoModelForSequenceClassification.from_config(config).eval(), dims["vocab_size"]


def seconds(model, vocabulary: int, rows: int, width: int, repeats: int) -> float:
    ids = torch.randint(5, vocabulary, (rows, width))
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(input_ids=ids, attention_mask=mask)  # warm-up
        times = []
        for _ in range(repeats):
            began = time.perf_counter()
            model(input_ids=ids, attention_mask=mask)
            times.append(time.perf_counter() - began)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", help="a best/ folder (default: --size's random-weight model)")
    parser.add_argument("--size", choices=("base", "large"), default="base")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    with tempfile.TemporaryDirectory():
        model, vocabulary = model_and_vocabulary(args)
        shapes = list(itertools.product(ROWS, WIDTHS))
        measured = np.array([seconds(model, vocabulary, n, width, args.repeats) for n, width in shapes])
    tokens = np.array([n * width for n, width in shapes], dtype=np.float64)
    # relative least squares: every shape counts alike, the 1-row calls as much as the 4,096-token ones
    design = np.stack([np.ones_like(tokens), tokens], axis=1) / measured[:, None]
    (fixed, per_token), *_ = np.linalg.lstsq(design, np.ones_like(measured), rcond=None)
    worst = np.abs((fixed + per_token * tokens) / measured - 1).max()
    what = args.checkpoint or f"random weights at {args.size} size"
    print(f"{what}, {torch.get_num_threads()} threads: a call {fixed * 1e3:.2f} ms + {per_token * 1e6:.2f} us a token")
    print(f"call_tokens = a / b = {fixed / per_token:.0f}; worst shape {worst:.0%} off the fit")
    for (n, width), took in zip(shapes, measured, strict=True):
        print(f"  {n:3d} x {width:4d}: {took * 1e3:8.2f} ms")


if __name__ == "__main__":
    main()
