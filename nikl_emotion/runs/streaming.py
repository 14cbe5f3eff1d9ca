"""A file of any size predicted in chunks, split across the processes of `accelerate launch` (GPUs or CPU
processes), written once, in input order, by the main process.

    accelerate launch inference.py --run OUT --input corpus.jsonl --output labels.jsonl [--probs probs.jsonl]

The rows are cut into consecutive chunks of `chunk_size` (default: `chunk_size_for` the file's rows, whatever the
number of processes); process r of W predicts the chunks r, r + W, r + 2W, ... Each chunk is sorted by length and
batched inside itself, so a chunk's probabilities do not depend on which process (or how many) computed it: the
output has the same bytes whatever W. Checkpoints are loaded one at a time, as `RunClassifier` does; each streams its
share of the file to a scratch file of float arrays beside the output (8 floats per row and checkpoint, in the dtype
the model gave). A chunk is parsed, cleaned and encoded once: its rows and encodings are kept in the scratch folder
(Arrow, memory-mapped) for the next checkpoint that reads them alike. The main process then reads every chunk's
ids and inputs from there with every checkpoint's part of it, decides it by the run's rule and appends it to the
outputs. Memory holds one checkpoint and one chunk, not the file; the scratch folder holds the file's rows and
their encodings. The outputs appear whole at the end (atomic renames); a killed job
leaves its scratch folder, which the next run writing the same output removes. Several machines need the output
folder on a shared disk.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from nikl_emotion.backends.classifier import SharedEncodings
from nikl_emotion.base.fileio import (
    atomic_writer,
    probs_line,
    read_arrow,
    remove_stale_temporaries,
    submission_line,
    write_arrow,
)
from nikl_emotion.runs.run_classifier import RunClassifier
from nikl_emotion.text.data import iter_column, iter_inputs, read_jsonl_chunks, scan_jsonl

__all__ = [
    "Processes",
    "chunk_size_for",
    "predict_in_chunks",
]


logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Processes:
    """This process's place among the processes of `accelerate launch` (one process: rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    state: object | None = None  # accelerate's PartialState when there are several

    @classmethod
    def current(cls) -> Processes:
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()  # no process group to join: one process, nothing imported or initialised
        import torch
        from accelerate import PartialState

        # without a GPU, accelerate joins the processes only when told they are CPU processes (gloo)
        state = PartialState(cpu=not torch.cuda.is_available())
        return cls(state.process_index, state.num_processes, state)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self):
        """This process's device under `accelerate launch` (its own GPU), or None (one process: the default)."""
        return None if self.state is None else self.state.device

    def owns(self, chunk: int) -> bool:
        return chunk % self.world == self.rank

    def wait(self) -> None:
        if self.state is not None:
            self.state.wait_for_everyone()

    def shared(self, value):
        """The main process's `value`, on every process."""
        if self.state is None:
            return value
        from accelerate.utils import broadcast_object_list

        return broadcast_object_list([value], from_process=0)[0]


def chunk_size_for(rows: int) -> int:
    """The default chunk: about 1/32 of the file, at least 2,048 rows (sorted batches of 128 then pad ~5% of their
    tokens, against ~10% at 1,024, on NIKL) and at most 65,536 (memory holds one chunk). It depends on the file
    alone, never on the number of processes: a chunk's batches, hence the output's bytes, are the same whoever
    computes it, and 2 to 8 processes each get several chunks of any file above ~10,000 rows."""
    return min(65536, max(2048, -(-rows // 32)))


def predict_in_chunks(classifier: RunClassifier, files, processes: Processes | None = None) -> int:
    """Predict `files.input_path` (any size) with `classifier`'s checkpoints over `processes` and write
    `files.output_path` (and `files.probs_path`) from the main process; returns the number of rows."""
    processes = processes or Processes.current()
    scan = scan_jsonl(files.input_path)  # every process validates: a bad row stops all before any prediction
    if scan.labelled and processes.is_main:
        logger.info(
            "%s: %d rows carry labels; prediction ignores them (score.py compares them)",
            files.input_path,
            scan.labelled,
        )
    start = time.perf_counter()
    chunks = _Chunks(files.input_path, files.chunk_size or chunk_size_for(scan.rows), scan.rows)
    with _scratch_folder(files.output_path, processes) as scratch:
        paths = classifier.checkpoints()
        for index, path in enumerate(paths):
            part = os.path.join(scratch, f"checkpoint{index}.rank{processes.rank}.npy")
            description = f"checkpoint {index + 1}/{len(paths)}"
            later = index + 1 < len(paths)  # a checkpoint still to come reads the encodings this one makes
            _predict_share(classifier.load(path), (files, chunks, scratch, later), processes, part, description)
        processes.wait()  # every share is on disk
        if processes.is_main:
            # alone, and no other process waits for it: a large corpus takes longer to write than a collective's
            # timeout (NCCL's 10 minutes), and the others have nothing left to do
            _write_outputs(classifier, files, (chunks, processes.world), scratch)
    if processes.is_main:
        seconds = time.perf_counter() - start
        logger.info(
            "predicted %d rows x %d checkpoints on %d process(es) in %.1f s (%.0f rows/s; chunks of %d rows)",
            scan.rows,
            len(paths),
            processes.world,
            seconds,
            scan.rows / max(seconds, 1e-9),
            chunks.size,
        )
    return scan.rows


class _Chunks:
    """The input's consecutive chunks: parsed once by the process that owns each, kept in the scratch folder as
    Arrow (`rows.chunk<N>.arrow`), from which later checkpoints and the writer read them without parsing again."""

    def __init__(self, path: str, size: int, rows: int):
        self.path, self.size, self.rows = path, size, rows
        self.count = -(-rows // size)
        self._parsed = False

    def owned(self, scratch: str, processes: Processes) -> Iterator[tuple[int, object]]:
        """(number, rows) of this process's chunks: parsed from the file the first time, then read back."""
        if self._parsed:
            for number in range(processes.rank, self.count, processes.world):
                yield number, read_arrow(self.kept(scratch, number))
            return
        for number, rows in read_jsonl_chunks(self.path, self.size, processes.owns):
            write_arrow(self.kept(scratch, number), rows)
            yield number, rows
        self._parsed = True

    def kept(self, scratch: str, number: int) -> str:
        return os.path.join(scratch, f"rows.chunk{number}.arrow")

    def share(self, processes: Processes) -> int:
        step = processes.world * self.size
        return sum(min(self.size, self.rows - start) for start in range(processes.rank * self.size, self.rows, step))


def _predict_share(model, where: tuple, processes: Processes, part: str, description: str) -> None:
    """This process's chunks of the file, predicted by one checkpoint, appended to `part` one array per chunk. Each
    chunk's cleaned and encoded rows are kept beside it in the scratch folder when a checkpoint is `later` to come:
    the next checkpoint that reads them alike (a run's next fold) reads them back instead of encoding again."""
    files, chunks, scratch, later = where
    bar = tqdm(
        total=chunks.share(processes),
        unit="row",
        unit_scale=True,
        desc=f"{description} (process {processes.rank + 1}/{processes.world})",
        disable=not processes.is_main,
    )
    with open(part, "wb") as handle, bar:
        for number, rows in chunks.owned(scratch, processes):
            shared = SharedEncodings(rows, store=os.path.join(scratch, f"chunk{number}"), write=later)
            np.save(handle, model.predict_proba(shared, batch_size=files.batch_size), allow_pickle=False)
            bar.update(len(rows))
    del model  # one checkpoint in memory at a time


def _write_outputs(classifier: RunClassifier, files, layout: tuple, scratch: str) -> None:
    """Every chunk in input order: each checkpoint's probabilities read from the process that computed them,
    decided by the classifier's rule, appended to the submission (and the probabilities file); ids and inputs
    from the chunks the processes kept."""
    (chunks, world), count = layout, len(classifier.checkpoints())
    with contextlib.ExitStack() as stack:
        parts = [
            [stack.enter_context(open(os.path.join(scratch, f"checkpoint{i}.rank{r}.npy"), "rb")) for r in range(world)]
            for i in range(count)
        ]
        output = stack.enter_context(atomic_writer(files.output_path))
        probs_output = stack.enter_context(atomic_writer(files.probs_path)) if files.probs_path else None
        for number in range(chunks.count):
            rows = read_arrow(chunks.kept(scratch, number))
            probs = [np.load(parts[i][number % world], allow_pickle=False) for i in range(count)]
            fold_probs = classifier.combine(probs)
            ids = list(iter_column(rows, "id"))
            output.writelines(map(submission_line, ids, iter_inputs(rows), classifier.rule.apply(fold_probs)))
            if probs_output is not None:
                probs_output.writelines(map(probs_line, ids, classifier.rule.mean(fold_probs)))


@contextlib.contextmanager
def _scratch_folder(output_path: str, processes: Processes) -> Iterator[str]:
    """A folder beside the output for the processes' parts (`.NAME.PID.shards`, named by the main process and
    shared), removed at the end; one a killed job left is removed first."""
    folder, name = os.path.split(os.path.abspath(output_path))
    scratch = None
    if processes.is_main:
        os.makedirs(folder, exist_ok=True)
        remove_stale_temporaries(folder, name)
        scratch = tempfile.mkdtemp(prefix=f".{name}.{os.getpid()}.", suffix=".shards", dir=folder)
    try:
        yield processes.shared(scratch)
    finally:
        if processes.is_main:
            shutil.rmtree(scratch, ignore_errors=True)
