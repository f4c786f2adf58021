"""poolx's own process engine, the default backend.

Driver side: ``_backend`` (the caller's side: pickling at submit) and
``_scheduler`` (the scheduler thread).  Child side: ``_worker``.  Both sides:
``_channel`` (the wire format).  This package's ``__init__`` imports nothing,
so that a worker importing ``_worker`` never loads the driver side.
"""
