"""The child side of the processes engine: what runs in a worker or actor process.

- ``_boot``: what every child does first (dies with its driver, channels,
  progress cell, ``poolx._context``), and the spawn/forkserver entry
  ``with_main``, which installs a stand-in ``__main__`` (no child runs the script);
- ``_worker``: the task worker (``main``, its loop, its batched results);
- ``_actor``: the actor process (``main``, its calls through a runner);
- ``_client``: the child's client channel to the driver (actor handles used
  inside a child, tasks submitted from it, refs fetched by it).

A child imports ``protocol``, ``_cell`` and ``_channel``, never ``driver``.
The driver does not import this package either: ``_backend`` hands the
entry points to the scheduler.
"""
