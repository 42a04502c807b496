from pathlib import Path

import numpy as np
import pytest
import torch

from arxivcls import models
from arxivcls.evaluate import predict_in_process

CPU, CUDA, MPS = torch.device("cpu"), torch.device("cuda"), torch.device("mps")


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_follows_the_cpu(monkeypatch, native):
    monkeypatch.setattr(models, "cpu_has_native_bf16", lambda: native)
    assert models.autocast_dtype("auto", CPU) == (torch.bfloat16 if native else None)
    assert models.autocast_dtype("fp32", CPU) is None
    assert models.autocast_dtype("bf16", CPU) == torch.bfloat16  # asked for: emulated where not native
    assert models.autocast_dtype("fp16", CPU) is None


@pytest.mark.parametrize("bf16_gpu", [True, False])
def test_auto_precision_on_cuda_and_mps(monkeypatch, bf16_gpu):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16_gpu)
    assert models.autocast_dtype("auto", CUDA) == (torch.bfloat16 if bf16_gpu else torch.float16)
    assert models.autocast_dtype("fp16", CUDA) == torch.float16
    assert models.autocast_dtype("auto", MPS) is None and models.autocast_dtype("bf16", MPS) is None


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="Linux only")
def test_cpu_bf16_detection_matches_cpuinfo():
    flags = set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("flags"):
                flags |= set(line.split(":", 1)[1].split())
    assert models.cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16", "amx_tile"})


def test_bf16_inference_is_autocast_and_close_to_fp32(tiny_bert, real_papers):
    texts = (real_papers.title + " " + real_papers.summary).tolist()[:64]
    fp32 = predict_in_process(str(tiny_bert), texts, max_length=128, precision="fp32")
    bf16 = predict_in_process(str(tiny_bert), texts, max_length=128, precision="bf16")
    difference = np.abs(bf16 - fp32).max()
    assert 0 < difference < 0.05  # rounded matmul inputs: different, but only just
    np.testing.assert_allclose(bf16.sum(axis=1), 1.0, atol=1e-5)
