"""Topology planning: which sub-masters the tree has, where they run, what each owns."""

from __future__ import annotations

import pytest

from core.config import LauncherConfig
from core.errors import ConfigError
from core.tree import Share, check_topology, children_of, top_shares


def leaves(shares: list[Share], nchildren: int | None = None) -> list[Share]:
    """The per-node (last level) sub-masters under ``shares``."""
    out = []
    for share in shares:
        below = children_of(share, nchildren)
        out.extend(leaves(below, nchildren) if below else [share])
    return out


def test_nlevels_1_has_one_sub_master_per_node_on_its_node() -> None:
    nodes = [f"n{i}" for i in range(5)]
    shares = top_shares(nodes, 1, None)
    assert [(s.nodes, s.host, s.levels) for s in shares] == [((n,), n, 1) for n in nodes]


def test_nlevels_2_groups_contiguous_shares_under_about_sqrt_n_sub_masters() -> None:
    nodes = [f"n{i}" for i in range(10)]
    shares = top_shares(nodes, 2, None)
    assert [len(s.nodes) for s in shares] == [3, 3, 2, 2]  # ceil(sqrt(10)) = 4 groups
    assert [n for s in shares for n in s.nodes] == nodes  # contiguous, in order
    assert all(s.host == s.nodes[0] for s in shares)
    assert [s.nodes for s in leaves(shares)] == [(n,) for n in nodes]


def test_nlevels_3_and_nchildren_shape_every_level_above_the_nodes() -> None:
    nodes = [f"n{i}" for i in range(27)]
    shares = top_shares(nodes, 3, 3)
    assert len(shares) == 3
    middle = [c for s in shares for c in children_of(s, 3)]
    assert len(middle) == 9 and all(len(m.nodes) == 3 for m in middle)
    assert [s.nodes for s in leaves(shares, 3)] == [(n,) for n in nodes]


def test_on_one_node_the_tree_splits_its_cpus() -> None:
    shares = top_shares(["n0"], 1, None, cpus=tuple(range(8)))
    assert [s.cpus for s in shares] == [(0, 1, 2), (3, 4, 5), (6, 7)]  # ceil(8 ** 0.5) = 3
    assert top_shares(["n0"], 1, 2, cpus=(0, 1, 2, 3))[1].cpus == (2, 3)


def test_auto_picks_the_seeds_levels_for_the_node_count() -> None:
    assert [LauncherConfig.auto(n).nlevels for n in (1, 2, 64, 65, 2048, 2049)] == [
        0,
        1,
        1,
        2,
        2,
        3,
    ]
    assert LauncherConfig.auto(3).child_executor_name == "mpi"


@pytest.mark.parametrize(
    ("nnodes", "nlevels", "nchildren", "local", "message"),
    [
        (3, 0, None, True, "nlevels=0 runs workers on this host only, but the launcher has 3"),
        (1, 0, None, False, "a node other than this host"),
        (4, 1, 2, True, "nchildren=2 cannot apply at nlevels=1 on 4 nodes"),
    ],
)
def test_trees_that_cannot_be_built_are_refused_with_the_fix(
    nnodes: int, nlevels: int, nchildren: int | None, local: bool, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        check_topology(nnodes, nlevels, nchildren, local)
    check_topology(nnodes, max(nlevels, 2), nchildren, local)  # one more level works
