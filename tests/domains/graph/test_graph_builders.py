"""Builders on tiny inputs (WordNet records, SMILES, SDF); the real builds are marked slow."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

from domains.graph.builders import (
    join_graphs,
    molecules_from_sdf,
    molecules_from_smiles,
    parse_wordnet_line,
    split_graphs,
    wordnet_graph,
)
from domains.graph.molecules import ATOM_FEATURES, BOND_FEATURES

WORDNET_LINES = [
    "  1 This software and database is being provided to you, the LICENSEE, by  \n",
    "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 ~ 00002137 n 0000 ~ 04424418 n 0000 | that which exists\n",
    "00001930 03 n 01 physical_entity 0 002 @ 00001740 n 0000 ~ 00002137 n 0000 | an entity that has physical existence\n",
    "00002137 03 n 02 abstraction 0 abstract_entity 0 002 @ 00001740 n 0000 + 01234567 v 0101 | a general concept formed by extracting common features\n",
    "00002452 05 n 01 thing 0 003 @ 00001930 n 0000 | a separate and self-contained entity\n",  # 3 pointers announced, 1 given
    "00002684 06 n 01 object 0 001 @ 00001930 n 0000 | a tangible and visible entity; an entity that can cast a shadow\n",
]


def test_parse_wordnet_line_reads_hex_word_counts_and_noun_pointers() -> None:
    offset, lex, targets, gloss = parse_wordnet_line(WORDNET_LINES[3])
    assert (offset, lex, targets) == (2137, 3, [1740]) and gloss.startswith(
        "a general concept"
    )  # the verb pointer is skipped
    with pytest.raises(ValueError, match="pointers"):
        parse_wordnet_line(WORDNET_LINES[4])


def test_wordnet_graph_skips_and_counts_corrupt_records(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        tensors, meta = wordnet_graph(iter(WORDNET_LINES), num_features=5)
    assert meta["num_nodes"] == 4 and meta["skipped_records"] == 1 and meta["skipped_lines"] == [5]
    assert "line 5 skipped" in caplog.text
    assert tensors["y"].tolist() == [0, 0, 0, 3] and meta["label_names"][3] == "noun.artifact"
    edges = set(map(tuple, tensors["edge_index"].T.tolist()))
    assert edges == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1), (1, 3), (3, 1)}  # undirected; 04424418 is absent
    assert meta["num_features"] == 5 and meta["terms"][0] == "entity"  # columns by document frequency
    assert tensors["x_indptr"].shape == (5,) and int(tensors["x_indices"].max()) < 5


def test_molecules_from_smiles_counts_bad_records() -> None:
    graphs, skipped = molecules_from_smiles(iter(["CCO\t1\n", "not-a-smiles\t2\n", "c1ccccc1\t3\n"]))
    assert skipped == 1 and [g.num_nodes for g in graphs] == [3, 6]
    ethanol, benzene = graphs
    assert ethanol.x.shape == (3, len(ATOM_FEATURES)) and ethanol.edge_index.shape == (2, 4)
    assert benzene.edge_attr.shape == (12, len(BOND_FEATURES)) and benzene.x[:, ATOM_FEATURES.index("aromatic")].all()


def test_molecules_from_sdf_reads_the_class_label() -> None:
    from rdkit import Chem

    blocks = []
    for smiles, label in (("CCCCC", "(A) low"), ("CCO", "(C) high"), ("CC", "(Z) unknown")):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("SOL_classification", label)
        blocks.append(Chem.MolToMolBlock(mol) + f">  <SOL_classification>\n{label}\n\n$$$$\n")
    graphs, skipped = molecules_from_sdf("".join(blocks).encode())
    assert skipped == 1 and [int(g.y) for g in graphs] == [0, 2]


def test_join_and_split_graphs_round_trip() -> None:
    graphs, _ = molecules_from_smiles(iter(["CCO", "c1ccccc1", "CN"]))
    for g, y in zip(graphs, (0, 1, 2)):
        g.y = torch.tensor([y])
    back = split_graphs(join_graphs(graphs))
    assert all(
        torch.equal(a.x, b.x) and torch.equal(a.edge_index, b.edge_index) and int(a.y) == int(b.y)
        for a, b in zip(graphs, back)
    )


@pytest.mark.slow
@pytest.mark.parametrize("name, count", [("wordnet-graph", 82115), ("molecules", 4991), ("solubility", 1282)])
def test_real_builds(name: str, count: int) -> None:
    from domains.graph.builders import load_prepared

    loaded = load_prepared(name)
    assert (loaded.num_nodes if name == "wordnet-graph" else len(loaded)) == count


def test_the_embedded_wordnet_is_the_whole_noun_file_with_its_licence(tmp_path: Path) -> None:
    """The shipped data.noun.xz: WordNet's licence in its first lines, 82,115 noun synsets, nothing downloaded."""
    import hashlib

    from domains.graph.builders import WORDNET_EMBEDDED, open_wordnet

    assert hashlib.sha256(WORDNET_EMBEDDED.read_bytes()).hexdigest() == EMBEDDED_WORDNET_SHA256
    with open_wordnet() as handle:
        lines = handle.readlines()
    header = [line for line in lines if line.startswith("  ")]
    assert any("WordNet 3.0 Copyright 2006 by Princeton University" in line for line in header)
    assert len(lines) - len(header) == 82115


def test_a_missing_embedded_wordnet_says_to_reinstall(tmp_path: Path) -> None:
    from domains.graph.builders import open_wordnet

    with pytest.raises(FileNotFoundError, match="data.noun.xz is missing .* reinstall mmssl"):
        open_wordnet(tmp_path / "data.noun.xz")


# domains/graph/data/README.md records the same digest
EMBEDDED_WORDNET_SHA256 = "e9b8406147e5b001bedcfa1f8c45f3569cb96f858679eb095dfbc0ac73824cae"
