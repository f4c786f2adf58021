"""pi: a Monte Carlo estimate of pi with numpy, split into chunks.

The classic first parallel workload: throw ``samples`` random points into the
unit square and count those inside the quarter circle.  Each chunk has its own
seed, so every form computes exactly the same estimate.

The three forms the ``poolx profile`` harness compares:

- ``serial(size)``: every chunk in this process;
- ``tasks(executor, size)``: one task per chunk;
- ``actors(executor, size)``: one ``Sampler`` actor per worker; each keeps a
  running count of the chunks it was given, and the driver adds the counts up.
"""

from __future__ import annotations

import importlib.util
from typing import Any

# numpy is imported where it is used (count_inside), so that a worker's first
# chunk pays for the import as a real program's would.  Without numpy every run
# would fail after running: say so as the scenario loads, before any run.
if importlib.util.find_spec("numpy") is None:
    raise ModuleNotFoundError("the pi scenario needs numpy: pip install numpy (poolx's 'examples' extra)",
                              name="numpy")

#: Default input size (random points): about 2 s of serial work on the 2-core CI machine.
SIZE = 100_000_000
SAMPLES = SIZE  # the name ``poolx demo`` used
CHUNKS = 16
#: Points drawn per numpy call inside a chunk: bounds memory at ~16 MB per worker.
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


def serial(size: int = SIZE, chunks: int = CHUNKS) -> float:
    """The estimate, computed in this process."""
    inside = sum(count_inside(n, seed) for n, seed in _split(size, chunks))
    return 4.0 * inside / size


def tasks(executor: Any, size: int = SIZE, chunks: int = CHUNKS) -> float:
    """The estimate, one task per chunk on ``executor``."""
    parts = _split(size, chunks)
    inside = sum(executor.map(count_inside, *zip(*parts), chunksize=1))
    return 4.0 * inside / size


class Sampler:
    """An actor that counts the points inside the circle over the chunks it is given."""

    def __init__(self) -> None:
        self.inside = 0

    def add(self, samples: int, seed: int) -> None:
        self.inside += count_inside(samples, seed)

    def total(self) -> int:
        return self.inside


def actors(executor: Any, size: int = SIZE, chunks: int = CHUNKS) -> float:
    """The estimate, on one ``Sampler`` actor per worker (chunks dealt round-robin)."""
    samplers = [executor.actor(Sampler) for _ in range(executor.max_workers)]
    for i, (n, seed) in enumerate(_split(size, chunks)):
        samplers[i % len(samplers)].add.remote(n, seed)  # calls run in order: no need to wait
    inside = sum(s.total.remote().result() for s in samplers)
    return 4.0 * inside / size
