"""Pure topology: which children each master of the launcher tree starts, and where.

``nlevels`` is the number of sub-master levels below the client's master:

- ``nlevels=0``: the client's master starts one worker per CPU of this node (one node only).
- ``nlevels>=1``: the client's master starts sub-masters. On several nodes, the last level of
  sub-masters has one per node, each running on its node and starting that node's workers; the
  levels above group contiguous shares of nodes, each sub-master running on the first node of its
  share. ``nchildren`` is the number of children of each master above the per-node level (fewer
  when it owns fewer nodes); by default about the ``L``-th root of the nodes it owns when ``L``
  levels remain, which gives one sub-master per node at ``nlevels=1``, ``ceil(sqrt(N))`` groups of
  about ``sqrt(N)`` nodes at ``nlevels=2``, and so on.
- On one node, ``nlevels>=1`` builds the same tree over the node's CPUs instead (a way to try
  deep trees on one machine): each master splits its CPUs into ``nchildren`` equal shares
  (default: the ``(L+1)``-th root of its CPU count, the workers being the last level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from core.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Share:
    """What one sub-master owns, and how many levels of sub-masters it heads."""

    nodes: tuple[str, ...]
    """The nodes of its share; it runs on the first."""
    levels: int
    """Sub-master levels at and below it (1: it starts the workers of its node)."""
    cpus: tuple[int, ...] | None = None
    """On a one-node run, its share of that node's CPUs (None: the node's own CPUs)."""

    @property
    def host(self) -> str:
        """Where this sub-master runs."""
        return self.nodes[0]


def check_topology(nnodes: int, nlevels: int, nchildren: int | None, local: bool) -> None:
    """Refuse a tree that cannot be built over ``nnodes`` nodes, naming the fix.

    ``local`` says whether the one node (when ``nnodes == 1``) is the host the client runs on.

    Raises:
        ConfigError: ``nlevels=0`` with several nodes (or one remote node), or ``nchildren`` at
            ``nlevels=1`` over several nodes, where each node has its own sub-master.
    """
    if nlevels == 0 and (nnodes > 1 or not local):
        where = f"{nnodes} nodes" if nnodes > 1 else "a node other than this host"
        raise ConfigError(
            f"nlevels=0 runs workers on this host only, but the launcher has {where}; use "
            "nlevels=1 or more (or leave launcher_config unset to choose by node count)"
        )
    if nlevels == 1 and nnodes > 1 and nchildren is not None and nchildren != nnodes:
        raise ConfigError(
            f"nchildren={nchildren} cannot apply at nlevels=1 on {nnodes} nodes: the last level "
            f"has one sub-master per node; use nlevels=2 to group the {nnodes} nodes under "
            f"{nchildren} sub-masters, or leave nchildren unset"
        )


def top_shares(nodes: list[str], nlevels: int, nchildren: int | None,
               cpus: tuple[int, ...] = ()) -> list[Share]:  # fmt: skip
    """The sub-masters the client's master starts (``nlevels >= 1``).

    ``cpus`` are the one node's CPUs on a one-node run (split between the sub-masters).
    """
    if nlevels < 1:
        raise ValueError("top_shares needs nlevels >= 1")
    return children_of(Share(tuple(nodes), nlevels + 1, cpus or None), nchildren)


def children_of(share: Share, nchildren: int | None) -> list[Share]:
    """The sub-masters a master owning ``share`` starts (none when ``share.levels == 1``)."""
    below = share.levels - 1
    if below < 1:
        return []
    if len(share.nodes) == 1:
        cpus = share.cpus
        if not cpus:  # a lone remote node: its sub-master discovers the CPUs there
            return [Share(share.nodes, below)]
        k = nchildren or math.ceil(len(cpus) ** (1 / (below + 1)))
        return [Share(share.nodes, below, part) for part in _split(cpus, k)]
    if below == 1:
        return [Share((node,), 1) for node in share.nodes]
    k = nchildren or math.ceil(len(share.nodes) ** (1 / below))
    return [Share(part, below) for part in _split(share.nodes, k)]


def _split(items: tuple[str, ...] | tuple[int, ...], k: int) -> list[tuple]:  # type: ignore[type-arg]
    """``items`` in ``min(k, len)`` contiguous parts whose sizes differ by at most one."""
    k = max(1, min(k, len(items)))
    size, extra = divmod(len(items), k)
    parts, start = [], 0
    for i in range(k):
        end = start + size + (1 if i < extra else 0)
        parts.append(tuple(items[start:end]))
        start = end
    return parts
