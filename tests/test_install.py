"""The install: no package index named in the Makefile, and packaging metadata setuptools accepts."""

import re
import subprocess
import warnings

from tests.conftest import REPO


def test_the_makefile_names_no_index_host_and_takes_the_torch_index_from_a_variable(tmp_path):
    makefile = (REPO / "Makefile").read_text()
    assert not re.search(r"[a-z]+://", makefile)  # no URL of any kind
    dry = subprocess.run(
        [
            "make",
            "-n",
            "-C",
            str(REPO),
            "install",
            f"VENV={tmp_path / 'venv'}",
            "TORCH_INDEX=file:///mirror/cpu",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert '--extra-index-url "file:///mirror/cpu"' in dry
    assert "pip download -q --no-index --no-deps" in dry  # the local wheel comes first


def test_setuptools_reads_the_project_table_without_a_deprecation_warning():
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = read_configuration(REPO / "pyproject.toml")
    assert config["project"]["license"] == "Apache-2.0"
    assert [str(w.message) for w in caught if "license" in str(w.message).lower()] == []
