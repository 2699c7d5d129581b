"""torch.distributed DDP, switched on by the environment ``torchrun`` sets.

``torchrun --nproc_per_node N -m nmt_cli.main train ...`` (or ``torchrun ... $(which nmt) train``)
starts N processes with RANK / WORLD_SIZE / LOCAL_RANK set; each reads its shard of the batches,
gradients are averaged by DistributedDataParallel, and only rank 0 validates, logs and saves.
Backend: NCCL on GPUs, gloo on CPU.
"""

from __future__ import annotations

import os
from contextlib import nullcontext
from dataclasses import dataclass

import torch


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device: str = "auto") -> "Dist":
        """The ranks torchrun set (one process: rank 0 of 1, nothing initialised). ``device`` is
        train.device: cuda (or auto, where CUDA is) gives each process its GPU and NCCL; cpu, gloo."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        # train.device = cpu (or NMT_DDP_CPU=1) keeps the processes on the CPU even where CUDA is
        use_cuda = torch.cuda.is_available() and device != "cpu" and os.environ.get("NMT_DDP_CPU") != "1"
        if device.startswith("cuda") and not torch.cuda.is_available():
            from nmt.errors import NmtError

            raise NmtError("train.device = cuda: no CUDA device is available here; use cpu")
        if use_cuda:
            torch.cuda.set_device(local)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return cls(rank, world, local, torch.device(f"cuda:{local}" if use_cuda else "cpu"))

    def wrap(self, model):
        if not self.enabled:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model):
        return model.no_sync() if self.enabled else nullcontext()

    def sum(self, value: int) -> int:
        """Sum an integer over all ranks."""
        return int(self._all_reduce(value, torch.long))

    def sum_float(self, value: float) -> float:
        """Sum a float over all ranks (in float64)."""
        return float(self._all_reduce(value, torch.float64))

    def _all_reduce(self, value, dtype):
        if not self.enabled:
            return value
        import torch.distributed as dist

        t = torch.tensor([value], dtype=dtype, device=self.device)
        dist.all_reduce(t)
        return t.item()

    def any(self, flag: bool) -> bool:
        return self.sum(int(bool(flag))) > 0

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
