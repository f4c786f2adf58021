"""The ``poolx`` command's harnesses: ``poolx profile`` (serial, task and actor
runs of one scenario, compared and profiled) and ``poolx bench`` (poolx beside
its peers).  Imported only by the command: nothing here loads at ``import poolx``."""
