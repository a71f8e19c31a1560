"""`make test-anycpu` tests something only if its settings really make other bytes on this CPU."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from tests.anycpu import other_cpu_env
from tests.conftest import PROJECT_ROOT, subprocess_env

# A few Adam steps of the project's own model: the digest of its weights.
TRAIN_A_LITTLE = """
import hashlib, torch
from classifier.training.model import NeuralNetwork
torch.manual_seed(0)
model = NeuralNetwork()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
images, labels = torch.rand(640, 1, 28, 28), torch.randint(0, 10, (640,))
for start in range(0, 640, 64):
    loss = torch.nn.functional.cross_entropy(model(images[start:start + 64]), labels[start:start + 64])
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
print(hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.parameters())).hexdigest())
"""


def weights_digest(**env: str) -> str:
    result = subprocess.run([sys.executable, "-c", TRAIN_A_LITTLE], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env=subprocess_env(**{"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", **env}), timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


# MKL and the x86 kernel levels are what tests/anycpu.py turns; an arm64 build of torch has neither.
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"),
                    reason=f"tests/anycpu.py caps x86 kernels (MKL, AVX levels); this is {platform.machine()}")
def test_the_other_cpu_settings_train_other_bytes_and_the_same_ones_the_same():
    native = weights_digest()
    assert weights_digest() == native  # one machine, one setting: the same bytes
    assert weights_digest(**other_cpu_env()) != native  # what make test-anycpu runs under is another CPU to torch
