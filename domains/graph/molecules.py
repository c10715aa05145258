"""RDKit molecules -> PyG graphs: one node per heavy atom, one undirected edge per bond.

Atom features (``ATOM_FEATURES``, 0/1) follow the usual MoleculeNet-style one-hots:
element (the 11 most common in drug-like sets, else ``other``), heavy-atom degree,
formal charge, attached hydrogens, hybridisation, aromaticity and ring membership. Bond
features (``edge_attr``): single, double, triple, aromatic, conjugated, in ring.
RDKit is imported by the caller (the builders); this module only reads the molecule.
"""

from __future__ import annotations

from typing import Any

import torch
from torch_geometric.data import Data

ELEMENTS = ("C", "N", "O", "S", "F", "Cl", "Br", "I", "P", "B", "Si")
DEGREES, CHARGES, HYDROGENS = (0, 1, 2, 3, 4, 5), (-1, 0, 1), (0, 1, 2, 3)
HYBRIDISATIONS = ("SP", "SP2", "SP3", "SP3D", "SP3D2")
BONDS = ("SINGLE", "DOUBLE", "TRIPLE", "AROMATIC")

ATOM_FEATURES = (
    *(f"element={e}" for e in (*ELEMENTS, "other")),
    *(f"degree={d}" for d in DEGREES),
    *(f"charge={c}" for c in CHARGES),
    *(f"hydrogens={h}" for h in HYDROGENS),
    *(f"hybridisation={h}" for h in HYBRIDISATIONS),
    "aromatic",
    "in_ring",
)
BOND_FEATURES = (*(f"bond={b}" for b in BONDS), "conjugated", "in_ring")


def _one_hot(value: Any, choices: tuple, other: bool = False) -> list[float]:
    hot = [float(value == c) for c in choices]
    return hot + [float(value not in choices)] if other else hot


def atom_features(atom: Any) -> list[float]:
    """One atom -> ``len(ATOM_FEATURES)`` 0/1 features."""
    return (
        _one_hot(atom.GetSymbol(), ELEMENTS, other=True)
        + _one_hot(min(atom.GetDegree(), 5), DEGREES)
        + _one_hot(max(-1, min(atom.GetFormalCharge(), 1)), CHARGES)
        + _one_hot(min(atom.GetTotalNumHs(), 3), HYDROGENS)
        + _one_hot(str(atom.GetHybridization()), HYBRIDISATIONS)
        + [float(atom.GetIsAromatic()), float(atom.IsInRing())]
    )


def bond_features(bond: Any) -> list[float]:
    return _one_hot(str(bond.GetBondType()), BONDS) + [float(bond.GetIsConjugated()), float(bond.IsInRing())]


def mol_to_graph(mol: Any) -> Data:
    """An RDKit ``Mol`` -> ``Data(x [atoms, F], edge_index [2, 2 * bonds], edge_attr [2 * bonds, 6])``."""
    x = torch.tensor([atom_features(a) for a in mol.GetAtoms()], dtype=torch.float32)
    src, dst, attr = [], [], []
    for bond in mol.GetBonds():
        i, j, f = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx(), bond_features(bond)
        src += [i, j]
        dst += [j, i]
        attr += [f, f]
    edge_index = torch.tensor([src, dst], dtype=torch.long).view(2, -1)
    edge_attr = torch.tensor(attr, dtype=torch.float32).view(-1, len(BOND_FEATURES))
    return Data(x=x, edge_index=edge_index, edge_attr=edge_attr, num_nodes=x.shape[0])
