"""A small interpreter of the SQL shapes forget_sql.py emits, over rows held in memory, so that the strict
BigQuery fake can run them (and refuse DML on rows in the streaming buffer, as BigQuery does).

Not a SQL engine: it knows the statements forget sends (COUNT per table joined by UNION ALL, DELETE with a
condition, INSERT ... SELECT FROM UNNEST, INSERT ... VALUES) and the conditions they use (`c IN
UNNEST(@p)`, constant partitions `c BETWEEN 0 AND 3999` / `c IN (1, 5)`, `c IN (SELECT k FROM t WHERE
... UNION ALL ...)`, `EXISTS (SELECT 1 FROM UNNEST(@p) AS x WHERE REGEXP_CONTAINS(c, x))`, `c = @p`,
`c < @p`, AND, OR, parentheses, FALSE). Anything else raises NotImplementedError, so a change of shape
in forget_sql.py cannot be silently misread. What the SQL means on a real engine is checked by the
integration test on bqemulator; that it is BigQuery's SQL, by ZetaSQL.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

_TOKEN = re.compile(
    r"\s*(?:(?P<path>`[^`]+`)|(?P<param>@\w+)|(?P<string>'[^']*')|(?P<word>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<number>\d+)|(?P<op><=|>=|!=|[(),=<>*]))"
)

Rows = Callable[[str], list[dict[str, Any]]]  # table path -> its rows
Row = dict[str, Any]


@dataclass
class Parsed:
    kind: str  # count, delete, insert
    table: str = ""
    where: Any = None
    parts: list[tuple[str, str, Any]] | None = None  # count: (name param, table, condition)
    columns: list[str] | None = None
    values: list[Any] | None = None  # insert: expressions ("param", name) / ("ref", alias) / ("null",)
    unnest: tuple[str, str] | None = None  # insert: (param, alias)


class _Tokens:
    def __init__(self, sql: str) -> None:
        self.items: list[tuple[str, str]] = []
        pos = 0
        while pos < len(sql):
            if sql[pos:].strip() == "":
                break
            match = _TOKEN.match(sql, pos)
            if not match:
                raise NotImplementedError(f"fake SQL: cannot read {sql[pos : pos + 40]!r}")
            kind = match.lastgroup or ""
            self.items.append((kind, match.group(kind)))
            pos = match.end()
        self.i = 0

    def peek(self, ahead: int = 0) -> str:
        j = self.i + ahead
        return self.items[j][1] if j < len(self.items) else ""

    def next(self) -> str:
        value = self.peek()
        self.i += 1
        return value

    def expect(self, *words: str) -> None:
        for word in words:
            got = self.next()
            if got.upper() != word.upper():
                raise NotImplementedError(f"fake SQL: expected {word}, got {got!r}")

    def done(self) -> bool:
        return self.i >= len(self.items)


def _path(token: str) -> str:
    if not token.startswith("`"):
        raise NotImplementedError(f"fake SQL: expected a `project.dataset.table`, got {token!r}")
    return token.strip("`")


def _condition(t: _Tokens) -> Any:
    terms = [_and(t)]
    while t.peek().upper() == "OR":
        t.next()
        terms.append(_and(t))
    return ("or", terms) if len(terms) > 1 else terms[0]


def _and(t: _Tokens) -> Any:
    factors = [_factor(t)]
    while t.peek().upper() == "AND":
        t.next()
        factors.append(_factor(t))
    return ("and", factors) if len(factors) > 1 else factors[0]


def _factor(t: _Tokens) -> Any:
    word = t.peek().upper()
    if word == "(":
        t.next()
        inner = _condition(t)
        t.expect(")")
        return inner
    if word == "FALSE":
        t.next()
        return ("false",)
    if word == "EXISTS":  # EXISTS (SELECT 1 FROM UNNEST(@p) AS x WHERE REGEXP_CONTAINS(col, x))
        t.next()
        t.expect("(", "SELECT")
        if t.next() != "1":
            raise NotImplementedError("fake SQL: EXISTS (SELECT 1 ...) only")
        t.expect("FROM", "UNNEST", "(")
        param = t.next()
        t.expect(")", "AS")
        alias = t.next()
        t.expect("WHERE", "REGEXP_CONTAINS", "(")
        column = t.next()
        t.expect(",")
        if t.next() != alias:
            raise NotImplementedError("fake SQL: REGEXP_CONTAINS(column, alias) only")
        t.expect(")", ")")
        return ("regexp_any", column.strip("`"), param[1:])
    column = t.next().strip("`")
    op = t.next().upper()
    if op == "BETWEEN":  # a constant range of partitions: `_bucket` BETWEEN 0 AND 3999
        low = int(t.next())
        t.expect("AND")
        return ("between", column, low, int(t.next()))
    if op == "IN" and t.peek() == "(" and t.items[t.i + 1][0] == "number":  # constant partitions: IN (1, 5)
        t.expect("(")
        listed = {int(t.next())}
        while t.next() == ",":
            listed.add(int(t.next()))
        return ("in_list", column, listed)
    if op == "IN":
        if t.peek().upper() == "UNNEST":
            t.expect("UNNEST", "(")
            param = t.next()
            t.expect(")")
            return ("in_param", column, param[1:])
        t.expect("(")
        selects = [_select_key(t)]
        while t.peek().upper() == "UNION":
            t.expect("UNION", "ALL")
            selects.append(_select_key(t))
        t.expect(")")
        return ("in_select", column, selects)
    if op in ("=", "<"):
        param = t.next()
        if not param.startswith("@"):
            raise NotImplementedError(f"fake SQL: values are parameters, got {param!r}")
        return (op, column, param[1:])
    raise NotImplementedError(f"fake SQL: operator {op!r}")


def _select_key(t: _Tokens) -> tuple[str, str, Any]:
    t.expect("SELECT")
    key = t.next().strip("`")
    t.expect("FROM")
    table = _path(t.next())
    t.expect("WHERE")
    return (key, table, _condition(t))


def parse(sql: str) -> Parsed:
    # A DELETE on a table split into integer ranges names its target `_old`, to confine it to partitions.
    t = _Tokens(sql.replace("` AS _old WHERE", "` WHERE").replace("_old.`", "`"))
    first = t.peek().upper()
    if first == "DELETE":
        t.expect("DELETE", "FROM")
        table = _path(t.next())
        t.expect("WHERE")
        where = _condition(t)
        parsed = Parsed("delete", table, where)
    elif first == "SELECT":
        parts = []
        while True:
            t.expect("SELECT")
            name = t.next()
            t.expect("AS", "table_name", ",", "COUNT", "(", "*", ")", "AS", "n", "FROM")
            table = _path(t.next())
            t.expect("WHERE")
            parts.append((name[1:], table, _condition(t)))
            if t.peek().upper() != "UNION":
                break
            t.expect("UNION", "ALL")
        parsed = Parsed("count", parts=parts)
    elif first == "INSERT":
        t.expect("INSERT", "INTO")
        table = _path(t.next())
        t.expect("(")
        columns = [t.next()]
        while t.next() == ",":
            columns.append(t.next())
        values: list[Any] = []
        unnest = None
        if t.peek().upper() == "VALUES":
            t.expect("VALUES", "(")
            values.append(("param", t.next()[1:]))
            while t.next() == ",":
                values.append(("param", t.next()[1:]))
        else:
            t.expect("SELECT")
            while True:
                token = t.next()
                values.append(("param", token[1:]) if token.startswith("@") else ("ref", token))
                if t.peek() != ",":
                    break
                t.next()
            t.expect("FROM", "UNNEST", "(")
            param = t.next()[1:]
            t.expect(")", "AS")
            unnest = (param, t.next())
        if len(values) != len(columns):
            raise NotImplementedError("fake SQL: INSERT with as many values as columns only")
        parsed = Parsed("insert", table, columns=columns, values=values, unnest=unnest)
    else:
        raise NotImplementedError(f"fake SQL: statement {first!r}")
    if not t.done():
        raise NotImplementedError(f"fake SQL: left over {t.items[t.i :]!r}")
    return parsed


def holds(condition: Any, row: Row, params: Mapping[str, Any], rows: Rows) -> bool:
    """Whether `row` meets `condition`, with BigQuery's NULL rules for these shapes (NULL IN ... is not true)."""
    kind = condition[0]
    if kind == "false":
        return False
    if kind == "or":
        return any(holds(c, row, params, rows) for c in condition[1])
    if kind == "and":
        return all(holds(c, row, params, rows) for c in condition[1])
    column = condition[1]
    value = row.get(column)
    if value is None:
        return False
    if kind == "in_param":
        return value in params[condition[2]]
    if kind == "between":
        return bool(condition[2] <= int(value) <= condition[3])
    if kind == "in_list":
        return int(value) in condition[2]
    if kind == "in_select":
        return any(
            value == other.get(key)
            for key, table, where in condition[2]
            for other in rows(table)
            if holds(where, other, params, rows)
        )
    if kind == "regexp_any":
        return any(re.search(pattern, value) for pattern in params[condition[2]])
    if kind == "=":
        return bool(value == params[condition[2]])
    if kind == "<":
        bound = params[condition[2]]
        return bound is not None and _moment(value) < _moment(bound)
    raise NotImplementedError(kind)


def _moment(value: Any) -> Any:
    """A TIMESTAMP as the fake may hold it (as streamed, ISO text; as a parameter, a datetime)."""
    return datetime.fromisoformat(value.replace("Z", "+00:00")) if isinstance(value, str) else value
