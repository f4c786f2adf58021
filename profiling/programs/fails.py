"""Some parallel work on poolx, then a bug: the program ends with a traceback and exit code 1.

    python fails.py

`poolx profile run fails.py` keeps both (the program's exit code is the
command's), and its report still shows the work that ran before the error.
"""

import poolx


def square(x):
    return x * x


def mean(values):
    return sum(values) / len(values)


if __name__ == "__main__":
    with poolx.Executor(2) as executor:
        squares = list(executor.map(square, range(2_000), chunksize=100))
    print(f"{len(squares)} squares, sum {sum(squares)}")
    evens = [s for s in squares if s % 2 == 0 and s < 0]
    print(f"mean of the negative even squares: {mean(evens)}")  # ZeroDivisionError: there are none
