"""Transfer.generate runs any number of crops in bounded chunks, with the same result as one batch."""

import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fexsdk
import fexsdk.transfer as transfer


def _faces(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (8, 48, 48), dtype=np.uint8)
    return base[np.arange(n) % 8]


@pytest.mark.parametrize("seed_kind", ["int", "list"])
def test_chunks_give_the_one_batch_result(monkeypatch, seed_kind):
    x = _faces(150)
    targets = [i % 7 for i in range(150)]
    seed = 5 if seed_kind == "int" else list(range(100, 250))
    tr = fexsdk.Transfer(threads=1)
    monkeypatch.setattr(transfer, "GENERATE_CHUNK", 64)
    chunked = tr.generate(x, targets, seed=seed)
    monkeypatch.setattr(transfer, "GENERATE_CHUNK", 10**9)
    whole = tr.generate(x, targets, seed=seed)
    assert np.array_equal(chunked, whole)
    # And the chunks are not all alike: face i's noise follows its index, not its place in a chunk.
    assert not np.array_equal(chunked[:64], chunked[64:128])


def test_a_wrong_number_of_targets_or_seeds_is_refused_before_any_work():
    tr = fexsdk.Transfer(threads=1)
    with pytest.raises(ValueError, match="targets for 300"):
        tr.generate(_faces(300), ["happy"] * 299, seed=0)
    with pytest.raises(ValueError, match="seeds for 300"):
        tr.generate(_faces(300), "happy", seed=[1, 2])


@pytest.mark.slow
def test_four_thousand_faces_stay_under_a_gigabyte():
    code = textwrap.dedent("""
        import resource, numpy as np, fexsdk
        tr = fexsdk.Transfer(threads=1)
        x = np.random.default_rng(0).integers(0, 256, (4000, 48, 48), dtype=np.uint8)
        tr.generate(x[:8], "happy", seed=0)  # warm up the session's arenas
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out = tr.generate(x, "happy", seed=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert out.shape == x.shape
        print((after - before) / 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", **__import__("os").environ})
    assert res.returncode == 0, res.stderr
    extra_mb = float(res.stdout.strip().splitlines()[-1])
    assert extra_mb < 1024, f"generate(4000 faces) took {extra_mb:.0f} MB more at its peak"
