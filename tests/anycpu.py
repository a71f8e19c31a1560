"""`make test-anycpu`: the tests that train models and judge them, run again as another CPU would run them.

Two CPUs train different model bytes from the same inputs (their SIMD kernels sum in different orders), and
on the default data that difference is as large as the effects the tests look at. A test that asserts which
verdict case a retrain lands in passes on the CPU it was written on and fails on another. This runs those
tests with PyTorch's, MKL's and oneDNN's kernels capped below what this CPU has, so every model comes out
with other bytes, as on another machine; they must pass here too.

    python -m tests.anycpu [pytest args]    # the Makefile passes -n and the test files
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def native_has_avx512(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    try:
        return " avx512f" in cpuinfo.read_text()
    except OSError:
        return False


def other_cpu_env() -> dict[str, str]:
    """Settings that change the kernels every matmul and vector op uses: one level below this CPU's own
    (AVX2 where it has AVX-512, else SSE4), and MKL's reproducible generic path (MKL_CBWR=COMPATIBLE). The
    caps alone change nothing on an AMD EPYC with AVX-512 (MKL takes the same path there whatever it is
    allowed; measured Dec 2026), the generic path changes the bytes on both makers' CPUs. One thread, as
    `make test` trains, so threads are not what differs."""
    aten, mkl, onednn = ("AVX2", "AVX2", "AVX2") if native_has_avx512() else ("DEFAULT", "SSE4_2", "SSE41")
    return {"ATEN_CPU_CAPABILITY": aten, "MKL_ENABLE_INSTRUCTIONS": mkl, "ONEDNN_MAX_CPU_ISA": onednn,
            "MKL_CBWR": "COMPATIBLE", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def main(argv: list[str]) -> None:
    env = {**os.environ, **other_cpu_env()}
    print("make test-anycpu: " + " ".join(f"{key}={value}" for key, value in other_cpu_env().items()), flush=True)
    os.execve(sys.executable, [sys.executable, "-m", "pytest", *argv], env)


if __name__ == "__main__":
    main(sys.argv[1:])
