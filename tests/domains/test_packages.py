"""The download helpers every domain's builders share (domains/packages.py): each failure is one sentence."""

from __future__ import annotations

from pathlib import Path

import pytest

from domains import packages


def test_missing_tool_raises_runtime_error() -> None:
    with pytest.raises(RuntimeError, match="no-such-tool-xyz"):
        packages.require_tool("no-such-tool-xyz", "install it")
    with pytest.raises(RuntimeError, match="listing nothing"):
        packages.run_command(["false"], "listing nothing")
    with pytest.raises(RuntimeError, match="some-package"):
        packages.deb_file(Path("/nonexistent"), "usr/share/x", "some-package")


def test_every_builder_imports_the_shared_helpers_and_none_reads_another_domain_by_path() -> None:
    root = Path(packages.__file__).parent
    for builders in sorted(root.glob("*/builders.py")):
        source = builders.read_text()
        assert "domains.text.debian" not in source, builders
        if builders.parent.name != "text":  # the text domain's own files (austen.txt.gz) are its to read
            assert 'text" / "data' not in source and "text/data/" not in source, builders
    for name in ("image", "audio", "graph", "text"):
        assert "from domains.packages import" in (root / name / "builders.py").read_text(), name
