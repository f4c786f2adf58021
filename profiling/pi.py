"""pi: a Monte Carlo estimate of pi with numpy, split into chunks.

The classic first parallel workload: throw ``samples`` random points into the
unit square and count those inside the quarter circle; each chunk has its own
seed, so the serial and parallel runs compute exactly the same estimate.

Forms: ``serial(...)`` and ``tasks(executor, ...)``.  (The actor form and the
profiling harness that compares them arrive with the ``poolx profile`` command.)
"""

from __future__ import annotations

from typing import Any

# About 2 s of serial work on the 2-core CI machine (50M samples took ~1 s).
SAMPLES = 100_000_000
CHUNKS = 16
# Points drawn per numpy call inside a chunk: bounds memory at ~16 MB per worker.
BLOCK = 1_000_000


def count_inside(samples: int, seed: int) -> int:
    """How many of ``samples`` random points fall inside the quarter circle."""
    import numpy as np

    rng = np.random.default_rng(seed)
    inside = 0
    for start in range(0, samples, BLOCK):
        n = min(BLOCK, samples - start)
        x = rng.random(n)
        y = rng.random(n)
        inside += int(np.count_nonzero(x * x + y * y <= 1.0))
    return inside


def _split(samples: int, chunks: int) -> list[tuple[int, int]]:
    base, extra = divmod(samples, chunks)
    return [(base + (i < extra), i) for i in range(chunks)]


def serial(samples: int = SAMPLES, chunks: int = CHUNKS) -> float:
    """The estimate, computed in this process."""
    inside = sum(count_inside(n, seed) for n, seed in _split(samples, chunks))
    return 4.0 * inside / samples


def tasks(executor: Any, samples: int = SAMPLES, chunks: int = CHUNKS) -> float:
    """The estimate, one task per chunk on ``executor``."""
    parts = _split(samples, chunks)
    inside = sum(executor.map(count_inside, *zip(*parts), chunksize=1))
    return 4.0 * inside / samples
