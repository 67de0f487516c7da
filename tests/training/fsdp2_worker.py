"""Run by tests/test_distributed.py under `torchrun --nproc_per_node 2` (gloo, CPU): layer-wise
log-probs of a model sharded with FSDP2 (`fully_shard`) equal the unsharded model's, values and
gradients, for the final and two intermediate layers; with the output head in the root unit and
with the head sharded as a unit of its own; and `token_logprobs` given the head's sharded weight
(a `DTensor`) directly gathers it. Exits non-zero (an assertion) on any mismatch."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

from dpolab.modeling.collate import PairCollator, batch_targets
from dpolab.modeling.head import token_logprobs
from dpolab.modeling.logprobs import layer_logprobs
from dpolab.testing import tiny_model

PAIRS = [
    {"prompt_ids": [5, 6, 7], "chosen_ids": [8, 9, 10], "rejected_ids": [11, 12]},
    {"prompt_ids": [13, 14], "chosen_ids": [15], "rejected_ids": [16, 17, 18, 19]},
]
LAYERS = [1, 3, 4]


def full(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if isinstance(t, DTensor) else t


def logps_and_grads(model, batch):
    out = layer_logprobs(model, batch, LAYERS, targets=batch_targets(batch))
    upstream = torch.arange(1.0, out.logps.numel() + 1).reshape(out.logps.shape)  # non-uniform
    (out.logps * upstream).sum().backward()
    return out.logps.detach(), {n: full(p.grad) for n, p in model.named_parameters()}


def sharded(head_unit: bool, mesh):
    model = tiny_model("llama", vocab_size=64)
    for block in model.model.layers:
        fully_shard(block, mesh=mesh)
    if head_unit:
        fully_shard(model.lm_head, mesh=mesh)
    fully_shard(model, mesh=mesh)
    assert isinstance(model.lm_head.weight, DTensor)
    return model


def main() -> None:
    dist.init_process_group("gloo")
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    batch = PairCollator(pad_token_id=2)(PAIRS)
    expected, expected_grads = logps_and_grads(tiny_model("llama", vocab_size=64), batch)
    for head_unit in (False, True):
        model = sharded(head_unit, mesh)
        logps, grads = logps_and_grads(model, batch)
        torch.testing.assert_close(logps, expected, rtol=1e-5, atol=1e-5)
        for name, grad in grads.items():
            torch.testing.assert_close(grad, expected_grads[name], rtol=1e-4, atol=1e-5, msg=name)

    # the head's weight handed over while sharded (outside its forward): gathered, differentiably
    model = sharded(True, mesh)
    plain = tiny_model("llama", vocab_size=64)
    hidden = torch.randn(5, plain.config.hidden_size, generator=torch.Generator().manual_seed(0))
    tokens = torch.tensor([1, 7, 63, 0, 9])
    ours = token_logprobs(hidden, model.lm_head.weight, None, tokens, chunk_tokens=2)
    theirs = token_logprobs(hidden, plain.lm_head.weight, None, tokens, chunk_tokens=2)
    torch.testing.assert_close(ours, theirs)
    ours.sum().backward()
    theirs.sum().backward()
    assert isinstance(model.lm_head.weight.grad, DTensor)
    torch.testing.assert_close(full(model.lm_head.weight.grad), plain.lm_head.weight.grad)
    # both ranks done with every collective before the group goes: tearing gloo down while the
    # other rank still has one in flight aborts that rank ("terminate called without an active
    # exception"), after the checks have passed
    dist.barrier()
    if dist.get_rank() == 0:
        print("fsdp2 ok")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
