"""The package installs (offline, editable) and its console script runs every command without the top-level
scripts: they are thin wrappers over the package, never the other way round."""

import os
import site
import subprocess
import sys
import sysconfig
import venv

import pytest
from conftest import ROOT, SAMPLE_DEV


def test_editable_install_offline_gives_the_console_script(tmp_path):
    setuptools = pytest.importorskip("setuptools")
    if int(setuptools.__version__.split(".")[0]) < 64:
        pytest.skip(f"editable installs from pyproject.toml need setuptools >= 64, found {setuptools.__version__}")
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    see_the_running_interpreters_packages(python)
    found = subprocess.run(
        [str(python), "-c", "import setuptools; print(setuptools.__file__)"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert found.stdout.strip() == setuptools.__file__  # the running interpreter's, not the base one's (in a venv)
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    script = env_dir / "bin" / "nikl-emotion"
    elsewhere = tmp_path / "elsewhere"  # not the repository: only the installed package is importable here
    elsewhere.mkdir()
    listing = subprocess.run([str(script), "--help"], cwd=elsewhere, capture_output=True, text=True, timeout=120)
    assert listing.returncode == 0 and "  train " in listing.stdout and "  export " in listing.stdout
    scored = subprocess.run(
        [str(script), "score", str(SAMPLE_DEV), str(SAMPLE_DEV), "--json"],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": ""},
    )
    assert scored.returncode == 0, scored.stderr[-2000:]
    assert '"micro_f1": 1.0' in scored.stdout.strip().splitlines()[-1]
    bad = subprocess.run(
        [str(script), "score", str(SAMPLE_DEV)], cwd=elsewhere, capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2  # argparse's own usage error


def see_the_running_interpreters_packages(python) -> None:
    """Give a new venv the packages of the interpreter running the tests (torch & co. are not reinstalled; its pip
    and setuptools build the package), whether that is a venv, a conda environment or a bare interpreter:
    `system_site_packages` would give the *base* interpreter's instead, which inside a venv lacks them."""
    own = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    running = [*site.getsitepackages(), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
    if site.ENABLE_USER_SITE:
        running.append(site.getusersitepackages())
    paths = [p for p in dict.fromkeys(running) if os.path.isdir(p) and p in sys.path]
    with open(os.path.join(own, "running_interpreter.pth"), "w", encoding="utf-8") as handle:
        handle.write("\n".join(paths) + "\n")


def test_the_package_never_runs_the_top_level_scripts():
    package = ROOT / "nikl_emotion"
    for path in package.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert "runpy" not in text, path
        for script in ("train", "post_train", "inference", "ensemble", "score", "report", "export", "losses"):
            assert f"\nimport {script}\n" not in text and f"\nfrom {script} import" not in text, (path, script)
