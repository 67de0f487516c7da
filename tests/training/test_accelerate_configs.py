"""The accelerate configs under examples/accelerate/ are what docs/distributed.md says they are: accelerate
reads each (it rejects unknown keys), with the backend, ZeRO stage and FSDP settings documented."""

from __future__ import annotations

from pathlib import Path

import pytest
from accelerate.commands.config.config_args import ClusterConfig
from accelerate.utils import DistributedType

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "accelerate"


def _load(name: str) -> ClusterConfig:
    return ClusterConfig.from_yaml_file(str(CONFIGS / name))


def test_every_shipped_config_is_tested():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == [
        "ddp.yaml",
        "deepspeed_zero2.yaml",
        "deepspeed_zero3.yaml",
        "fsdp.yaml",
    ]


@pytest.mark.parametrize(
    "name, backend",
    [
        ("ddp.yaml", DistributedType.MULTI_GPU),
        ("fsdp.yaml", DistributedType.FSDP),
        ("deepspeed_zero2.yaml", DistributedType.DEEPSPEED),
        ("deepspeed_zero3.yaml", DistributedType.DEEPSPEED),
    ],
)
def test_config_reads_as_documented(name, backend):
    config = _load(name)
    assert config.distributed_type == backend
    assert config.mixed_precision == "bf16" and not config.use_cpu
    assert config.num_machines == 1 and config.num_processes > 1


def test_fsdp_is_fsdp2_without_cpu_ram_efficient_loading():
    # docs/distributed.md: keep fsdp_cpu_ram_efficient_loading false (other processes would hold empty weights
    # for the frozen reference and the reference precomputation)
    fsdp = _load("fsdp.yaml").fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_cpu_ram_efficient_loading"] is False


@pytest.mark.parametrize("name, stage", [("deepspeed_zero2.yaml", 2), ("deepspeed_zero3.yaml", 3)])
def test_deepspeed_zero_stage(name, stage):
    assert _load(name).deepspeed_config["zero_stage"] == stage
