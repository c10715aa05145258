"""No code runs from data: a lint over the source tree for the calls that execute what they load.

A recipe, a dataset file, a checkpoint or a downloaded model must never run code. This test
fails on any call below in ``mmssl/``, ``domains/`` or ``benchmarks/`` that is not in the
explicit allow-list, each entry of which says why it is safe. The behaviour behind the
allow-list (malicious pickles that do not run) is tested where it lives: checkpoints in
``tests/mmssl/test_checkpoint_safety.py``, graph files and sources in ``tests/domains/graph``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p for d in ("mmssl", "domains", "benchmarks") for p in (ROOT / d).rglob("*.py"))

# (file relative to the root, what the call is) -> why it is safe
ALLOWED = {
    (
        "domains/graph/data.py",
        "torch.load(weights_only=<not True>)",
    ): "only with the user's data.trust_pickle=true, documented as running the file's code",
}


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _is_true(node: ast.expr | None) -> bool:
    return isinstance(node, ast.Constant) and node.value is True


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def findings(tree: ast.AST) -> list[tuple[int, str]]:
    """``(line, what)`` of every call in ``tree`` that can execute loaded data."""
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in ("eval", "exec") or name.startswith("pickle.") and name.endswith(("load", "loads")):
            found.append((node.lineno, f"{name}()"))
        elif name.endswith("torch.load") and not _is_true(_keyword(node, "weights_only")):
            found.append((node.lineno, "torch.load(weights_only=<not True>)"))
        elif (
            name.endswith("np.load")
            and _keyword(node, "allow_pickle") is not None
            and not (
                isinstance(_keyword(node, "allow_pickle"), ast.Constant) and not _keyword(node, "allow_pickle").value
            )
        ):
            found.append((node.lineno, "np.load(allow_pickle=...)"))
        elif (
            name == "yaml.load"
            and "Safe" not in ast.unparse(_keyword(node, "Loader") or ast.Constant(None))
            and "_Loader" not in ast.unparse(node)
        ):
            found.append((node.lineno, "yaml.load(unsafe Loader)"))
        elif name == "yaml.unsafe_load" or name == "yaml.full_load":
            found.append((node.lineno, f"{name}()"))
        elif _is_true(_keyword(node, "shell")):
            found.append((node.lineno, "subprocess(shell=True)"))
        elif _is_true(_keyword(node, "trust_remote_code")):
            found.append((node.lineno, "trust_remote_code=True"))
    return found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_call_executes_loaded_data(path: Path) -> None:
    rel = str(path.relative_to(ROOT))
    bad = [
        f"{rel}:{line}: {what}"
        for line, what in findings(ast.parse(path.read_text(), str(path)))
        if (rel, what) not in ALLOWED
    ]
    assert not bad, "calls that can run code from data:\n" + "\n".join(bad)


def test_the_lint_finds_what_it_looks_for() -> None:
    code = (
        "import torch, pickle, yaml, subprocess, numpy as np\n"
        "torch.load(f)\ntorch.load(f, weights_only=False)\ntorch.load(f, weights_only=True)\n"
        "pickle.loads(b)\nyaml.load(t, Loader=yaml.Loader)\nyaml.load(t, Loader=yaml.SafeLoader)\n"
        "subprocess.run(c, shell=True)\nnp.load(p, allow_pickle=True)\nnp.load(p, allow_pickle=False)\n"
        "eval(s)\nAutoModel.from_pretrained(n, trust_remote_code=True)\n"
    )
    lines = [line for line, _ in findings(ast.parse(code))]
    assert lines == [2, 3, 5, 6, 8, 9, 11, 12]
