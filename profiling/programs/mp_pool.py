"""Count the primes below a bound, chunk by chunk, with a multiprocessing.Pool.

    python mp_pool.py [limit] [chunks]

A plain multiprocessing script: it has never heard of poolx.  Under
`poolx profile run --drop-in mp_pool.py` its Pool runs on poolx.
"""

import multiprocessing
import sys


def count_primes(bounds):
    lo, hi = bounds
    count = 0
    for n in range(max(lo, 2), hi):
        if all(n % d for d in range(2, int(n**0.5) + 1)):
            count += 1
    return count


def main(limit, chunks):
    step = limit // chunks
    ranges = [(lo, min(lo + step, limit)) for lo in range(0, limit, step)]
    total = 0
    with multiprocessing.Pool(2) as pool:
        for count in pool.imap_unordered(count_primes, ranges):
            total += count
    print(f"{total} primes below {limit:,} ({len(ranges)} chunks)")


if __name__ == "__main__":
    limit = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    chunks = int(sys.argv[2]) if len(sys.argv) > 2 else 16
    main(limit, chunks)
