"""The pipeline's commands, each a `main(argv) -> exit code`: run by the top-level scripts (`train.py`), by
`python -m nikl_emotion COMMAND` and by the `nikl-emotion COMMAND` console script alike."""
