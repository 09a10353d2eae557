"""Shared SQL recipes, one floor below the operations: catalog facts in, composed SQL or steps
out. Nothing here decides what to do; the planners in ``ops/`` do."""
