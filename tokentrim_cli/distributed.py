"""Several processes (`accelerate launch -m tokentrim_cli eval ...`): who does what, and gathering.

Samples are sharded deterministically (sample i to the process with rank i % world); every process
walks the same number of batches (shorter shards walk empty ones) so that the collective calls
between batches line up: the main process counts everybody's finished samples (progress for the
whole run) and, at the end, gathers every record. One process (no launcher) is the same code with
world 1 and no communication.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass


def launched() -> bool:
    """Whether this process was started by a distributed launcher (accelerate, torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _leave_process_group() -> None:
    """Destroy the process group while the interpreter is still whole.

    Gloo's worker threads release each finished collective's tensors after the caller has moved on,
    and releasing a tensor takes the GIL; a worker that asks for it while the interpreter finalises
    aborts the process ("terminate called without an active exception", SIGABRT), and the launcher
    then kills the others and fails a run whose results were all written (about one run in ten
    here). Destroying the group joins those threads first. That only works when nothing else holds
    the group: torch.distributed.nn.functional binds `group.WORLD` as default arguments when it is
    first imported (transformers' imports pull it in), so from_environment imports it before the
    group exists."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@dataclass
class Shard:
    rank: int = 0
    world: int = 1

    @classmethod
    def single(cls) -> Shard:
        return cls()

    @classmethod
    def from_environment(cls) -> Shard:
        """The launcher's process group (gloo on CPU, NCCL on GPUs), through accelerate."""
        if not launched():
            return cls.single()
        import torch
        import torch.distributed.nn.functional  # noqa: F401  (before the group exists: see _leave_process_group)
        from accelerate import PartialState

        # Without GPUs the launcher's processes still need a process group: gloo (accelerate's
        # MULTI_CPU); with GPUs, NCCL.
        state = PartialState(cpu=not torch.cuda.is_available())
        atexit.register(_leave_process_group)
        return cls(rank=state.process_index, world=state.num_processes)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def local_device(self, device: str) -> str:
        """The device this process should load onto: its own GPU when there are several."""
        if self.world > 1 and device in ("auto", "cuda"):
            import torch

            if torch.cuda.is_available():
                return f"cuda:{int(os.environ.get('LOCAL_RANK', self.rank))}"
            return "cpu" if device == "auto" else device
        return device

    # ---- collectives (no-ops for one process) -------------------------------------------------

    def _dist(self):
        import torch.distributed as dist

        return dist

    def barrier(self) -> None:
        if self.world > 1:
            self._dist().barrier()

    def broadcast(self, value):
        if self.world == 1:
            return value
        box = [value]
        self._dist().broadcast_object_list(box, src=0)
        return box[0]

    def _all_reduce(self, number: float, op: str) -> float:
        import torch

        dist = self._dist()
        tensor = torch.tensor([number], dtype=torch.float64)
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
        return float(tensor.item())

    def padded(self, batches: list[list]) -> list[list]:
        """The batches, with empty ones appended so every process walks as many."""
        if self.world == 1:
            return batches
        most = int(self._all_reduce(len(batches), "max"))
        return batches + [[] for _ in range(most - len(batches))]

    def total_done(self, done: int, mine: int) -> int:
        return done + (mine if self.world == 1 else int(self._all_reduce(mine, "sum")))

    def max_seconds(self, seconds: float) -> float:
        return seconds if self.world == 1 else self._all_reduce(seconds, "max")

    def _gather(self, value) -> list:
        if self.world == 1:
            return [value]
        gathered = [None] * self.world
        self._dist().all_gather_object(gathered, value)
        return gathered

    def gather_records(self, records: dict) -> dict:
        merged: dict = {}
        for part in self._gather(records):
            merged.update(part)
        return merged

    def gather_skipped(self, skipped: set) -> set:
        return set().union(*self._gather(skipped))

    def gather_list(self, values: list) -> list:
        return [v for part in self._gather(values) for v in part]
