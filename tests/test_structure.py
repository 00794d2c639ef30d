"""The package's import graph has no cycle, lazy and TYPE_CHECKING imports included."""

from __future__ import annotations

from pathlib import Path

from benchmarks.structure import import_graph, run


def test_the_package_has_no_import_cycle():
    structure = import_graph()
    assert "nansearch.search.study" in structure.graph
    assert "nansearch.search.queue" in structure.graph["nansearch.search.study"]
    assert structure.cycles == [], structure.cycles


def test_a_lazy_or_type_checking_import_that_closes_a_loop_is_a_cycle(tmp_path: Path):
    pkg = tmp_path / "nansearch"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("from nansearch.sub.a import f\n")
    (pkg / "sub" / "a.py").write_text("def f():\n    from nansearch.sub import b\n    return b\n")
    (pkg / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n"
    )
    (pkg / "c.py").write_text("import nansearch.sub.b\n")
    structure = import_graph(pkg)
    assert structure.cycles == [["nansearch.sub.a", "nansearch.sub.b"]]
    assert structure.graph["nansearch.c"] == {"nansearch.sub.b"}
    assert structure.graph["nansearch.sub"] == {"nansearch.sub.a"}


def test_the_structure_command_prints_the_tree_the_cycles_and_the_largest_modules():
    text = run()
    assert "nansearch/search/:" in text
    assert "import cycles: 0" in text
    assert "largest modules: nansearch." in text
