"""docs/api.md's examples run as written (doctest), against a finished run of the quickstart (each module's
`__all__` is checked in test_architecture.py)."""

import doctest
import os

from conftest import ROOT


def test_the_api_page_examples_run(tiny_run, monkeypatch):
    monkeypatch.chdir(ROOT)  # the examples name the sample files and configs as a user in the repository would
    monkeypatch.syspath_prepend(str(ROOT))  # `from losses import ...`, as from the repository's root
    result = doctest.testfile(
        str(ROOT / "docs" / "api.md"),
        module_relative=False,
        globs={"run_dir": tiny_run},
        optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
        report=True,
    )
    assert result.attempted >= 25 and result.failed == 0, result


def test_the_package_root_exports_what_the_readme_uses():
    import nikl_emotion

    assert set(nikl_emotion.__all__) >= {"EmotionClassifier", "LABELS"}
    assert os.path.isfile(ROOT / "docs" / "api.md")
