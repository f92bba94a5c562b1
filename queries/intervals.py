"""SQL macros for the 95% intervals the grouped canned queries report.

``t975(df)``: the 0.975 quantile of Student's t with ``df`` degrees of freedom (NULL
for df < 1). DuckDB has no t distribution, so df 1..30 come from a table (scipy's
``stats.t.ppf(0.975, df)``, 9 decimals) and larger df from the Cornish-Fisher
expansion around the normal quantile (Abramowitz & Stegun 26.7.5), within 3e-8 of
the exact value at df = 31 and closer beyond.

``ci95_half(std, n)``: half-width of the t-interval of a mean over ``n`` independent
values with sample standard deviation ``std`` (NULL for n < 2): the interval is
``mean +- ci95_half(std, n)``. Macros expand inline, so aggregates may be passed:
``ci95_half(stddev_samp(value), count(*))``.
"""

from __future__ import annotations

import duckdb
from clusterprobe.queries.sql_text import execute

# t_{0.975}(df) for df = 1..30.
_T975_TABLE = (
    12.706204736, 4.30265273, 3.182446305, 2.776445105, 2.570581836, 2.446911851,
    2.364624252, 2.306004135, 2.262157163, 2.228138852, 2.20098516, 2.17881283,
    2.160368656, 2.144786688, 2.131449546, 2.119905299, 2.109815578, 2.10092204,
    2.093024054, 2.085963447, 2.079613845, 2.073873068, 2.06865761, 2.063898562,
    2.059538553, 2.055529439, 2.051830516, 2.048407142, 2.045229642, 2.042272456,
)  # fmt: skip
_Z975 = 1.959963984540054  # the normal distribution's 0.975 quantile


def _cornish_fisher(df: str) -> str:
    z = _Z975
    g = (
        (z**3 + z) / 4,
        (5 * z**5 + 16 * z**3 + 3 * z) / 96,
        (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
        (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160,
    )
    terms = " + ".join(f"{c!r} / pow({df}, {k})" for k, c in enumerate(g, start=1))
    return f"{z!r} + {terms}"


def define_interval_macros(con: duckdb.DuckDBPyConnection, setup: list[str]) -> None:
    table = "[" + ", ".join(repr(t) for t in _T975_TABLE) + "]"
    execute(
        con,
        setup,
        f"""CREATE MACRO t975(df) AS
CASE WHEN df IS NULL OR df < 1 THEN NULL
     WHEN df <= {len(_T975_TABLE)} THEN {table}[CAST(df AS INTEGER)]
     ELSE {_cornish_fisher("CAST(df AS DOUBLE)")} END""",
    )
    execute(con, setup, "CREATE MACRO ci95_half(std, n) AS t975(n - 1) * std / sqrt(n)")
