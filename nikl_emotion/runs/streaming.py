"""A file of any size predicted in chunks, split across the processes of `accelerate launch` (GPUs or CPU
processes), written once, in input order, by the main process.

    accelerate launch inference.py --run OUT --input corpus.jsonl --output labels.jsonl [--probs probs.jsonl]

The rows are cut into consecutive chunks of `chunk_size`; process r of W predicts the chunks r, r + W, r + 2W, ...
Each chunk is sorted by length and batched inside itself, so a chunk's probabilities do not depend on which process
(or how many) computed it: the output has the same bytes whatever W. Checkpoints are loaded one at a time, as
`RunClassifier` does; each streams its share of the file to a scratch file of float arrays beside the output (8
floats per row and checkpoint, in the dtype the model gave), and the main process then reads the input once more
with every checkpoint's part of each chunk, decides it by the run's rule and appends it to the outputs. Memory holds
one checkpoint and one chunk, not the file. The outputs appear whole at the end (atomic renames); a killed job
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

from nikl_emotion.base.fileio import atomic_writer, probs_line, remove_stale_temporaries, submission_line
from nikl_emotion.runs.run_classifier import RunClassifier
from nikl_emotion.text.data import iter_column, iter_inputs, read_jsonl_chunks, scan_jsonl

__all__ = [
    "Processes",
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
    with _scratch_folder(files.output_path, processes) as scratch:
        paths = classifier.checkpoints()
        for index, path in enumerate(paths):
            part = os.path.join(scratch, f"checkpoint{index}.rank{processes.rank}.npy")
            description = f"checkpoint {index + 1}/{len(paths)}"
            _predict_share(classifier.load(path), files, processes, part, (description, scan.rows))
        processes.wait()  # every share is on disk
        if processes.is_main:
            # alone, and no other process waits for it: a large corpus takes longer to write than a collective's
            # timeout (NCCL's 10 minutes), and the others have nothing left to do
            _write_outputs(classifier, files, processes.world, scratch)
    if processes.is_main:
        seconds = time.perf_counter() - start
        logger.info(
            "predicted %d rows x %d checkpoints on %d process(es) in %.1f s (%.0f rows/s)",
            scan.rows,
            len(paths),
            processes.world,
            seconds,
            scan.rows / max(seconds, 1e-9),
        )
    return scan.rows


def _predict_share(model, files, processes: Processes, part: str, progress: tuple[str, int]) -> None:
    """This process's chunks of the file, predicted by one checkpoint, appended to `part` one array per chunk."""
    (description, rows), chunk_size = progress, files.chunk_size
    share = sum(
        min(chunk_size, rows - start)
        for start in range(processes.rank * chunk_size, rows, processes.world * chunk_size)
    )
    bar = tqdm(
        total=share,
        unit="row",
        unit_scale=True,
        desc=f"{description} (process 1/{processes.world})",
        disable=not processes.is_main,
    )
    with open(part, "wb") as handle, bar:
        for _, chunk in read_jsonl_chunks(files.input_path, chunk_size, processes.owns):
            np.save(handle, model.predict_proba(chunk, batch_size=files.batch_size), allow_pickle=False)
            bar.update(len(chunk))
    del model  # one checkpoint in memory at a time


def _write_outputs(classifier: RunClassifier, files, world: int, scratch: str) -> None:
    """Every chunk in input order: each checkpoint's probabilities read from the process that computed them,
    decided by the classifier's rule, appended to the submission (and the probabilities file)."""
    count = len(classifier.checkpoints())
    with contextlib.ExitStack() as stack:
        parts = [
            [stack.enter_context(open(os.path.join(scratch, f"checkpoint{i}.rank{r}.npy"), "rb")) for r in range(world)]
            for i in range(count)
        ]
        output = stack.enter_context(atomic_writer(files.output_path))
        probs_output = stack.enter_context(atomic_writer(files.probs_path)) if files.probs_path else None
        for number, rows in read_jsonl_chunks(files.input_path, files.chunk_size):
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
