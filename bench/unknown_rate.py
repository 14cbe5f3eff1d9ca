"""Unknown-token rates on the NIKL files: how far normal use sits from the 5% limit at which training stops, and
what the limit catches (the Hangul-splitting BertTokenizer default).

python bench/unknown_rate.py [--vocab_size 8000]

Tokenizers measured, each on the cleaned text+target of train, dev and test (pair format, the default cleaning):
- `offline`: the offline backbone's WordPiece, trained on the train texts as train.py does;
- `bert-vocab, do_lower_case omitted`: the same vocabulary saved as `vocab.txt` with a tokenizer_config that leaves
  out `do_lower_case` (what transformers 5 lowercases and NFD-splits), loaded by plain `AutoTokenizer`;
- `... via load_tokenizer`: the same folder loaded by the pipeline (which fixes the setting).
Reads ../shared/data/nikluge-ea-2023 (or $NIKL_DATA); exits with a message when the data is not there.
"""

import argparse
import json
import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data", "nikluge-ea-2023")
sys.path.insert(0, ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab_size", type=int, default=8000)
    args = parser.parse_args()
    data = os.environ.get("NIKL_DATA", DEFAULT_DATA)
    files = {name: os.path.join(data, f"{name}.jsonl") for name in ("train", "dev", "test")}
    if not all(os.path.exists(path) for path in files.values()):
        sys.exit(f"skipped: NIKL data not found in {data} (set NIKL_DATA)")

    from transformers import AutoConfig, AutoTokenizer, ElectraConfig

    from nikl_emotion.backends.backbone import load_tokenizer, train_wordpiece_tokenizer
    from nikl_emotion.text.cleaning import CleaningOptions
    from nikl_emotion.text.data import load_jsonl
    from nikl_emotion.text.encoding import tokenize_batch, unknown_token_rate
    from nikl_emotion.text.preprocessing import Preprocessing, clean

    preprocessing = Preprocessing(
        CleaningOptions(remove_others=True, remove_placeholders=False, cleanse=True, remove_emoji=False)
    )
    cleaned = {name: clean(load_jsonl(path, "optional"), preprocessing) for name, path in files.items()}
    offline = train_wordpiece_tokenizer(cleaned["train"]["text"], vocab_size=args.vocab_size)
    folder = tempfile.mkdtemp()
    vocab = offline.get_vocab()
    with open(os.path.join(folder, "vocab.txt"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(sorted(vocab, key=vocab.get)) + "\n")
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as handle:
        json.dump({"tokenizer_class": "BertTokenizer"}, handle)
    ElectraConfig(vocab_size=len(vocab)).save_pretrained(folder)
    assert AutoConfig.from_pretrained(folder).type_vocab_size == 2
    tokenizers = {
        "offline": offline,
        "bert-vocab, do_lower_case omitted": AutoTokenizer.from_pretrained(folder),
        "bert-vocab, do_lower_case omitted, via load_tokenizer": load_tokenizer(folder),
    }
    print("| tokenizer | train | dev | test |")
    print("|---|---|---|---|")
    for label, tokenizer in tokenizers.items():
        rates = []
        for name in files:
            encoded = cleaned[name].map(
                tokenize_batch,
                batched=True,
                desc=f"{label} {name}",
                fn_kwargs={"tokenizer": tokenizer, "input_format": "pair", "max_length": preprocessing.max_seq_length},
            )
            rate, tokens = unknown_token_rate(encoded, tokenizer)
            rates.append(f"{100 * rate:.2f}% of {tokens:,}")
        print(f"| {label} | " + " | ".join(rates) + " |")


if __name__ == "__main__":
    main()
