"""Ray's teaching example, on poolx: remote tasks, an actor, ray.get and ray.wait.

    python ray_style.py [tasks]

The only change from a Ray script is the import: `import poolx as ray`.
"""

import sys

import poolx as ray


@ray.remote
def monte_carlo(seed, samples):
    import random

    rng = random.Random(seed)
    return sum(rng.random() ** 2 + rng.random() ** 2 <= 1 for _ in range(samples))


@ray.remote
class Tally:
    def __init__(self):
        self.inside = 0
        self.samples = 0

    def add(self, inside, samples):
        self.inside += inside
        self.samples += samples
        return self.samples

    def estimate(self):
        return 4 * self.inside / self.samples


if __name__ == "__main__":
    tasks = int(sys.argv[1]) if len(sys.argv) > 1 else 16
    samples = 500_000
    ray.init(num_cpus=2)
    tally = Tally.remote()
    pending = [monte_carlo.remote(seed, samples) for seed in range(tasks)]
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        ray.get(tally.add.remote(ray.get(done[0]), samples))
    print(f"pi ~ {ray.get(tally.estimate.remote()):.3f} from {tasks} tasks")
    ray.shutdown()
