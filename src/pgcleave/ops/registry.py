"""Every Python action a journaled step can name, and every recovery pass, listed once.

A plan names its actions by string (``"carve.copy"``) so that a job journaled by one process
resumes in another; this table is where those names resolve. Add an operation's actions here
when you write them. Names that earlier versions journaled stay resolvable through
``ALIASES``: never remove one, or their jobs could no longer be resumed.

Each entry names its module and function, imported when the action first runs: a job runs the
actions of one operation, and importing every operation's runtime cost a command more than its
own work (``bench/startup.py``). ``tests/test_startup.py`` resolves every entry.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..execute import ActionFn, Registry

if TYPE_CHECKING:
    from ..connection import Connection
    from ..execute import ActionContext


def _deferred(module: str, function: str) -> ActionFn:
    """The action ``pgcleave.ops.<module>.<function>``, imported when it is first called."""
    def action(ctx: ActionContext) -> None:
        resolve(module, function)(ctx)

    action.__qualname__ = action.__name__ = f"{module}.{function}"
    return action


def resolve(module: str, function: str) -> Any:
    """``pgcleave.ops.<module>.<function>`` itself (importing its module)."""
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def _recover_prepared(conn: Connection) -> object:
    return resolve("alter", "recover_prepared")(conn)


def _drop_unowned_spans(conn: Connection) -> object:
    from ..span_checks import drop_unowned

    return drop_unowned(conn)


#: Action name -> (module, function) in ``pgcleave.ops``.
TARGETS: dict[str, tuple[str, str]] = {
    "alter.apply": ("alter", "apply"),
    "alter.commit": ("alter", "commit"),
    "carve.copy": ("carve_run", "copy"),
    "carve.verify": ("carve_run", "verify"),
    "carve.swap": ("carve_run", "swap"),
    "copy.fill": ("copy_run", "fill"),
    "copy.build_indexes": ("copy_run", "build_indexes"),
    "copy.verify": ("copy_run", "verify"),
    "maintain.premake_validate": ("maintain", "premake_validate"),
    "maintain.premake_create": ("maintain", "premake_create"),
    "maintain.premake_locked": ("maintain", "premake_locked"),
    "move.subscribe": ("move_run", "subscribe"),
    "move.catch_up": ("move_run", "catch_up"),
    "move.cutover": ("move_run", "cutover"),
    "move.copy": ("move_copy_run", "copy"),
    "move.copy_cutover": ("move_copy_run", "cutover"),
    "move.remote_ddl": ("move_copy_run", "remote_ddl"),
    "retention.detach": ("retention", "detach"),
    "retention.archive": ("retention", "archive"),
    "retention.prearchive": ("retention", "prearchive"),
    "retention.load": ("retention", "load"),
    "server.user_mapping": ("server", "user_mapping"),
}

ACTIONS: dict[str, ActionFn] = {name: _deferred(*target) for name, target in TARGETS.items()}

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

REGISTRY = Registry(actions=ACTIONS, recovery_hooks=(_recover_prepared, _drop_unowned_spans),
                    aliases=ALIASES)
