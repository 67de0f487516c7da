"""The demo's settings: the full run (≈ 10 minutes on 2 CPU cores) and `--quick` (for tests).

The full values come from feasibility runs on this project's 2-core machine (the demo branch's
report has the numbers). With them, SFT reached a held-out greedy exact-match accuracy of 50–75 %
(four seeds: 55.5, 50.5, 75, 55.5 %) in 700 steps (≈ 100 s on 2 idle cores, ≈ 220 s with another
process busy on one of them), and each 100-step preference run took ≈ 45 s with one core busy
elsewhere. The quick values only make every stage run; at that size the model barely learns the
task (≈ 4 % accuracy), so the quick run shows none of the findings.

Threads: with 2 OpenMP threads and another busy process on a 2-core machine, PyTorch's spinning
threads made a step 10–20x slower; `OMP_WAIT_POLICY=PASSIVE` (set before torch is imported)
avoided that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dpolab.demo.model import ModelSize
from dpolab.demo.task import SplitSizes, TaskConfig


@dataclass(frozen=True)
class DemoSettings:
    """Everything a demo run needs besides its seed and output folder."""

    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelSize = field(default_factory=ModelSize)
    # SFT on the chosen solutions: one epoch over `sft_steps · sft_batch_size` training problems,
    # AdamW (betas 0.9, 0.98; no weight decay), linear warm-up then cosine decay, gradients clipped at 1
    sft_steps: int = 700
    sft_batch_size: int = 32
    sft_lr: float = 1e-3
    sft_warmup_ratio: float = 0.05
    # preference training from the SFT model (also the reference): AdamW, linear warm-up then constant
    pref_steps: int = 100
    pref_batch_size: int = 32
    pref_lr: float = 3e-5
    pref_warmup_ratio: float = 0.1
    beta: float = 0.3  # Smaug's β, used for every method
    dpop_lambda: float = 50.0  # Smaug's λ
    idpo_gamma: float = 0.9  # Intermediate DPO's γ
    idpo_layers: tuple[int, ...] = (3, 5)  # a middle and a late layer of the 6
    eval_problems: int = 200  # eval pairs and test problems each
    sample_temperature: float = 0.3
    max_new_tokens: int = 40
    num_threads: int = 2

    @property
    def split_sizes(self) -> SplitSizes:
        return SplitSizes(train=self.sft_steps * self.sft_batch_size, eval=self.eval_problems,
                          test=self.eval_problems)

    @property
    def pref_pairs(self) -> int:
        """Training pairs per preference run: one epoch of `pref_steps` batches (the first train problems)."""
        return self.pref_steps * self.pref_batch_size


FULL = DemoSettings()

QUICK = DemoSettings(
    model=ModelSize(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=4, intermediate_size=176),
    sft_steps=150,
    sft_lr=2e-3,
    pref_steps=15,
    pref_batch_size=16,
    idpo_layers=(2, 3),
    eval_problems=50,
)
