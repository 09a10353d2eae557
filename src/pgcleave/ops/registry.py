"""Every Python action a journaled step can name, and every recovery pass, listed once.

A plan names its actions by string (``"carve.copy"``) so that a job journaled by one process
resumes in another; this table is where those names resolve. Add an operation's actions here
when you write them. Names that earlier versions journaled stay resolvable through
``ALIASES``: never remove one, or their jobs could no longer be resumed.
"""

from __future__ import annotations

from ..execute import ActionFn, Registry
from . import alter, carve_run, copy_run, maintain, move_copy_run, move_run, retention, server

ACTIONS: dict[str, ActionFn] = {
    "alter.apply": alter.apply,
    "alter.commit": alter.commit,
    "carve.copy": carve_run.copy,
    "carve.verify": carve_run.verify,
    "carve.swap": carve_run.swap,
    "copy.fill": copy_run.fill,
    "copy.build_indexes": copy_run.build_indexes,
    "copy.verify": copy_run.verify,
    "maintain.premake_validate": maintain.premake_validate,
    "maintain.premake_create": maintain.premake_create,
    "maintain.premake_locked": maintain.premake_locked,
    "move.subscribe": move_run.subscribe,
    "move.catch_up": move_run.catch_up,
    "move.cutover": move_run.cutover,
    "move.copy": move_copy_run.copy,
    "move.copy_cutover": move_copy_run.cutover,
    "move.remote_ddl": move_copy_run.remote_ddl,
    "retention.detach": retention.detach,
    "retention.archive": retention.archive,
    "retention.prearchive": retention.prearchive,
    "retention.load": retention.load,
    "server.user_mapping": server.user_mapping,
}

#: Action names of pgcleave 0.1.0 -> their names today.
ALIASES: dict[str, str] = {
    "carve-copy": "carve.copy",
    "carve-verify": "carve.verify",
    "carve-swap": "carve.swap",
    "copy-fill": "copy.fill",
    "copy-build-indexes": "copy.build_indexes",
    "copy-verify": "copy.verify",
    "retention:detach": "retention.detach",
    "retention:archive": "retention.archive",
    "retention:load": "retention.load",
}

REGISTRY = Registry(actions=ACTIONS, recovery_hooks=(alter.recover_prepared,), aliases=ALIASES)
