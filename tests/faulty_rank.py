"""Launch script for tests/test_faults.py: adaptbench's command, with rank 1 failing as training starts
(while rank 0 goes on into training's collectives)."""

import torch.distributed as dist

from adaptbench.cli.app import app
from adaptbench.methods import finetune

_train = finetune.train


def _failing_on_rank_1(*args, **kwargs):
    if dist.is_initialized() and dist.get_rank() == 1:
        raise RuntimeError("injected fault on rank 1")
    return _train(*args, **kwargs)


finetune.train = _failing_on_rank_1

if __name__ == "__main__":
    app()
