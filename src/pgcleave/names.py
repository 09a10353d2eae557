"""Qualified relation names: parsed by the server, rendered with ``psycopg.sql.Identifier``.

User input such as ``"Sales"."Order Items"`` or ``orders`` is resolved by PostgreSQL itself
(``to_regclass``), so quoting, case folding and ``search_path`` follow the server's rules exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

from psycopg import sql

from .errors import Refused


@dataclass(frozen=True, order=True)
class QualifiedName:
    schema: str
    name: str

    @property
    def ident(self) -> sql.Identifier:
        return sql.Identifier(self.schema, self.name)

    @property
    def literal(self) -> sql.Literal:
        """The name as a string literal suitable for ``'...'::regclass``."""
        return sql.Literal(self.quoted)

    @property
    def quoted(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def sibling(self, name: str) -> QualifiedName:
        return QualifiedName(self.schema, name)

    def __str__(self) -> str:
        return self.quoted if self.schema != "public" else quote_ident(self.name)


def quote_ident(name: str) -> str:
    """Quote like PostgreSQL's ``quote_ident``: only when the name needs it."""
    simple = (
        name != ""
        and ((name[0].isalpha() and name[0].islower()) or name[0] == "_")
        and all((c.islower() and c.isascii()) or c.isdigit() or c == "_" for c in name)
    )
    if simple and name.upper() not in _RESERVED:
        return name
    return '"' + name.replace('"', '""') + '"'


def child_name(base: str, suffix: str) -> str:
    """A partition's name: ``base_suffix`` cut to PostgreSQL's 63-byte identifier limit."""
    full = f"{base}_{suffix}"
    raw = full.encode()
    if len(raw) <= 63:
        return full
    keep = 63 - len(suffix.encode()) - 1
    return raw[:keep].decode(errors="ignore") + "_" + suffix


# Enough of the reserved words to decide quoting for display; rendering for execution always
# goes through sql.Identifier, which quotes every name.
_RESERVED = {
    "ALL", "ANALYSE", "ANALYZE", "AND", "ANY", "ARRAY", "AS", "ASC", "ASYMMETRIC", "BOTH", "CASE",
    "CAST", "CHECK", "COLLATE", "COLUMN", "CONSTRAINT", "CREATE", "CURRENT_DATE", "CURRENT_ROLE",
    "CURRENT_TIME", "CURRENT_TIMESTAMP", "CURRENT_USER", "DEFAULT", "DEFERRABLE", "DESC",
    "DISTINCT", "DO", "ELSE", "END", "EXCEPT", "FALSE", "FETCH", "FOR", "FOREIGN", "FROM", "GRANT",
    "GROUP", "HAVING", "IN", "INITIALLY", "INTERSECT", "INTO", "LATERAL", "LEADING", "LIMIT",
    "LOCALTIME", "LOCALTIMESTAMP", "NOT", "NULL", "OFFSET", "ON", "ONLY", "OR", "ORDER", "PLACING",
    "PRIMARY", "REFERENCES", "RETURNING", "SELECT", "SESSION_USER", "SOME", "SYMMETRIC", "TABLE",
    "THEN", "TO", "TRAILING", "TRUE", "UNION", "UNIQUE", "USER", "USING", "VARIADIC", "WHEN",
    "WHERE", "WINDOW", "WITH",
}


# -- parsing user input --------------------------------------------------------------------------
def parse_columns(text: str | list[str] | tuple[str, ...]) -> list[str]:
    """``id, created_at`` / ``(id,created_at)`` / ``id,"Created At"`` -> column names.

    Unquoted names fold to lower case and quoted ones keep their spelling, as in SQL.
    """
    if not isinstance(text, str):
        return [c for part in text for c in parse_columns(part)]
    s = text.strip()
    if s.startswith("(") and s.endswith(")"):
        s = s[1:-1]
    out: list[str] = []
    cur: list[str] = []
    quoted = False
    in_quote = False
    i = 0
    while i < len(s):
        ch = s[i]
        if in_quote:
            if ch == '"':
                if i + 1 < len(s) and s[i + 1] == '"':
                    cur.append('"')
                    i += 1
                else:
                    in_quote = False
            else:
                cur.append(ch)
        elif ch == '"':
            in_quote = quoted = True
        elif ch == ",":
            out.append(_fold(cur, quoted))
            cur, quoted = [], False
        elif not ch.isspace():
            cur.append(ch)
        i += 1
    if in_quote:
        raise Refused(f"unterminated quote in column list {text!r}")
    if cur or quoted:
        out.append(_fold(cur, quoted))
    if not out or any(c == "" for c in out):
        raise Refused(f"empty column name in {text!r}",
                      hint="give columns separated by commas, e.g. id,created_at")
    return out


def _fold(chars: list[str], quoted: bool) -> str:
    name = "".join(chars)
    return name if quoted else name.lower()
