"""Actors: a worker with state, and everything that runs one.

``Executor.actor(Cls, *args, **kwargs)`` starts an actor on the executor's
backend and returns an ``ActorHandle``; ``handle.method.remote(*a, **kw)``
runs ``instance.method(*a, **kw)`` there and returns a poolx ``Future``.

The modules, from what users hold down to where a call runs:

* ``handle``: ``ActorHandle`` and ``ActorMethod`` (what users hold), and the
  functions through which the rest of poolx reads a handle (``handle_of``,
  ``owner_of``, ``actor_id``, ``label_of``, ``call_method``).
* ``options``: ``ActorOptions`` (name, restarts, concurrency, call timeout).
* ``directory``: the driver's records: ``Actor``, ``ActorCall`` and the
  ``ActorDirectory`` of one executor; the process's registry of its actors.
* ``pool``: ``ActorPool`` (Ray's) and ``map_actors`` (an autoscaling pool).
* ``runner``: an actor's instance and how its calls run (inline, on threads,
  on an event loop); used wherever the actor lives.
* ``local``: actors hosted in this process (the serial and threads backends).

The processes backend's actor host and actor process are in
``backends/processes``; they use ``directory`` and ``runner``.  This package
imports none of its modules itself, so a worker process that unpickles a
handle loads only what that needs.
"""
