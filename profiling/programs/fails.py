"""Some parallel work on poolx, then a bug: the program ends with a traceback and exit code 1.

    python fails.py

`poolx profile run fails.py` keeps both (the program's exit code is the
command's), and its report still shows the work that ran before the error.
"""

import random

import poolx


def simulate(seed):
    rng = random.Random(seed)
    return [rng.gauss(0, 1) for _ in range(50_000)]


def mean(values):
    return sum(values) / len(values)


if __name__ == "__main__":
    with poolx.Executor(2) as executor:
        samples = list(executor.map(simulate, range(8)))
    print(f"{len(samples)} samples of {len(samples[0]):,} values")
    outliers = [x for sample in samples for x in sample if abs(x) > 10]
    print(f"mean outlier: {mean(outliers)}")  # ZeroDivisionError: there are none
