"""Write a DuckDB result as a table, CSV, JSON (a list of row objects) or Parquet."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import math
import sys
import uuid
from pathlib import Path

import pyarrow as pa
from clusterprobe.tracker.errors import UsageError

FORMATS = ("table", "csv", "json", "parquet")


def _plain(value, type_: pa.DataType):
    """One Arrow value (as to_pylist gives it) -> a JSON-able Python value."""
    if value is None:
        return None
    if pa.types.is_map(type_):
        return {str(k): _plain(v, type_.item_type) for k, v in value}
    if pa.types.is_list(type_) or pa.types.is_large_list(type_):
        return [_plain(v, type_.value_type) for v in value]
    if pa.types.is_struct(type_):
        return {f.name: _plain(value[f.name], f.type) for f in type_}
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN/Infinity
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, uuid.UUID)):
        return str(value)
    return value


def to_records(table: pa.Table) -> list[dict]:
    columns = [
        [_plain(v, field.type) for v in table.column(i).to_pylist()]
        for i, field in enumerate(table.schema)
    ]
    names = table.schema.names
    return [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]


def write(relation, fmt: str, out: str | None = None) -> int:
    """Write ``relation`` (a DuckDB relation) in ``fmt`` to ``out`` or stdout; rows written."""
    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r}: choose one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        if not out:
            raise UsageError("--format parquet needs --out FILE.parquet (it is binary)")
        table = relation.to_arrow_table()
        import pyarrow.parquet as pq

        pq.write_table(table, out)
        return table.num_rows
    table = relation.to_arrow_table()
    if fmt == "json":
        text = json.dumps(to_records(table), indent=1, allow_nan=False) + "\n"
    elif fmt == "csv":
        text = _frame(table).to_csv(index=False)
    else:
        text = _table_text(table)
    if out:
        Path(out).write_text(text)
    else:
        sys.stdout.write(text)
    return table.num_rows


def _frame(table: pa.Table):
    # Maps and lists print as JSON in CSV/table cells rather than as Python reprs.
    records = to_records(table)
    import pandas as pd

    frame = pd.DataFrame.from_records(records, columns=table.schema.names)
    for field in table.schema:
        if pa.types.is_map(field.type) or pa.types.is_list(field.type):
            frame[field.name] = frame[field.name].map(
                lambda v: None if v is None else json.dumps(v)
            )
    return frame


def _table_text(table: pa.Table) -> str:
    if table.num_rows == 0:
        return "  ".join(table.schema.names) + "\n(0 rows)\n"
    import pandas as pd

    with pd.option_context("display.max_columns", None, "display.width", 200):
        return _frame(table).to_string(index=False, float_format=lambda x: f"{x:.4g}") + "\n"
