"""Which process of a job this is: :class:`Dist` (rank, world size, local rank).

It sits at the bottom, beside ``io`` and ``locks``, so that every layer can be told it: the engine sets it up
(``engine/distributed.py`` joins torchrun's process group and returns one), and hands it to the parts that
behave differently on rank 0 (the run-folder writer, the trackers) instead of each asking
``torch.distributed`` or the environment on its own. Plain data: importing this loads no torch.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Dist:
    """This process's place in a (torchrun) job; the default is a plain single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes the run folder and talks to the trackers."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1
