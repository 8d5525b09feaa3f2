"""The one way a benchmark prints its rows when run on its own (`python benchmarks/bench_x.py`)."""


def print_rows(rows: list[dict]) -> int:
    """Print each row (ours, baseline, ratio, target met or not, notes); return 0 for sys.exit."""
    for row in rows:
        print(row["benchmark"])
        print(f"  ours     {row['ours']:.4g} {row['unit']}")
        print(f"  baseline {row['baseline']:.4g} {row['unit']}")
        print(f"  ratio    {row['ratio']:.3g}  (target {row['target']}: {'met' if row['met'] else 'NOT met'})")
        print(f"  {row['notes']}")
    return 0
