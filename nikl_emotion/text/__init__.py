"""The text layer: reading and validating jsonl, cleaning, morphemes, target-aware encoding, padding batches,
and the loading preamble every command shares."""
