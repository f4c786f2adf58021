"""Hash blocks of bytes with a ProcessPoolExecutor, in a script without an `if __name__ == "__main__":` guard.

    python futures_noguard.py [blocks]

Under the fork start method (Linux's default up to Python 3.13) this runs as
is.  Under spawn or forkserver the stdlib's workers import the script again
and the pool refuses to start (the guard is missing).  Under
`poolx profile run --drop-in futures_noguard.py` the executor runs on poolx,
whose workers never import the main script, so no guard is needed.
"""

import hashlib
import sys
from concurrent.futures import ProcessPoolExecutor


def digest(seed):
    data = seed.to_bytes(8, "little")
    for _ in range(100_000):
        data = hashlib.sha256(data).digest()
    return seed, data.hex()[:12]


blocks = int(sys.argv[1]) if len(sys.argv) > 1 else 40
with ProcessPoolExecutor(max_workers=2) as executor:
    results = dict(executor.map(digest, range(blocks)))
print(f"{len(results)} digests, first {results[0]}")
