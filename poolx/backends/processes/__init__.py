"""poolx's own process engine, the default backend.

- ``_backend``: the ``ProcessBackend`` (the caller's side: pickling at
  submit), and where the two sides meet (it hands the children's entry
  points to the driver);
- ``driver/``: the scheduler thread, which owns every channel and child;
- ``child/``: what runs in a worker or actor process;
- ``protocol``: the messages and their records, one outcome encoder and
  decoder; ``_channel``: their framing; ``_cell``: the progress cell and
  results log a child shares with the driver through a file; ``_lifetime``:
  children never outlive their driver.  Both sides import these four.

The driver and the child never import each other.  This package's
``__init__`` imports nothing, so that a worker importing ``child._worker``
never loads the driver side.
"""
