"""Read-only snapshots of what the database holds. Nothing here changes anything."""

from .table import (
    Column,
    Constraint,
    ForeignKey,
    Index,
    Partition,
    Partitioning,
    Policy,
    SequenceInfo,
    TableInfo,
    Trigger,
    View,
    relation_exists,
    relation_exists_sql,
    resolve,
    server_version,
    snapshot,
)

__all__ = [
    "Column", "Constraint", "ForeignKey", "Index", "Partition", "Partitioning", "Policy",
    "SequenceInfo", "TableInfo", "Trigger", "View", "relation_exists", "relation_exists_sql",
    "resolve", "server_version", "snapshot",
]
