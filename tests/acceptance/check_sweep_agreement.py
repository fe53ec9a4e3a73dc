"""Do two sweeps agree on speed?  The acceptance check of issue 13.

    python -m ece662 sweep --out runs/a && python -m ece662 sweep --out runs/b   # (another sweep beside them)
    python tests/acceptance/check_sweep_agreement.py runs/a/results.json runs/b/results.json

For every row (the unpruned model and each pruned one) and both speed columns (``speedup``: the
kernels ece662 picks; ``masks_only``: the dense kernels on the masked weights), it asks whether
each run's median lies inside the other run's reported interval (``<col>_low``-``<col>_high``,
the rerun interval of ``ece662.timing``; results written before it existed: the interquartile
range), and whether either run's ratio is flagged by ``ece662.timing.flag_reason`` (the one rule:
a pruned model's whole interval above its FLOP ideal; a same-work ratio -- "masks only", and
the unpruned model against itself -- whose interval misses 1x).  It prints a Markdown table
(for ``benchmarks/RESULTS.md``) and exits 1 when any ratio disagrees or sits above its ideal.
"""
import argparse
import json
import sys

from ece662.timing import flag_reason


def bounds(row, col):
    if f"{col}_low" in row:
        return row[f"{col}_low"], row[f"{col}_high"], "interval"
    return row[f"{col}_iqr_low"], row[f"{col}_iqr_high"], "IQR"


def compare(a_rows, b_rows):
    """One dict per (row, column): the two medians and intervals and what they say."""
    out = []
    for a, b in zip(a_rows, b_rows):
        if (a["method"], a["target"]) != (b["method"], b["target"]):
            raise SystemExit(f"the two files hold different rows: {a['method']} {a['target']} vs "
                             f"{b['method']} {b['target']}; compare two runs of the same sweep command")
        if "speedup" not in a or "speedup" not in b:
            raise SystemExit(f"row {a['method']} {a['target']} has no speed columns: run the sweep with timing")
        for col in ("speedup", "masks_only"):
            alo, ahi, kind = bounds(a, col)
            blo, bhi, _ = bounds(b, col)
            same_work = col == "masks_only" or a["method"] == "none"
            out.append({
                "row": f"{a['method']} {a['target']:g}", "column": col, "kind": kind,
                "a": a[col], "a_low": alo, "a_high": ahi, "b": b[col], "b_low": blo, "b_high": bhi,
                "a_in_b": blo <= a[col] <= bhi, "b_in_a": alo <= b[col] <= ahi,
                "ideal": None if same_work else a["flop_ideal"],
                "above_ideal": (not same_work) and bool(flag_reason(a[col], alo, ahi, ideal=a["flop_ideal"])
                                                        or flag_reason(b[col], blo, bhi, ideal=b["flop_ideal"])),
                "misses_1x": same_work and bool(flag_reason(a[col], alo, ahi, same_work=True)
                                                or flag_reason(b[col], blo, bhi, same_work=True)),
            })
    return out


def table(checks):
    lines = ["| row | column | run A median (interval) | run B median (interval) | A in B's | B in A's | FLOP ideal "
             "| interval above ideal |",
             "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        ideal = f"{c['ideal']:.2f}x" if c["ideal"] is not None else "1x (same work)"
        above = ("**yes**" if c["above_ideal"] else "no") if c["ideal"] is not None else \
            ("interval misses 1x" if c["misses_1x"] else "-")
        lines.append(f"| {c['row']} | {c['column']} | {c['a']:.2f}x ({c['a_low']:.2f}-{c['a_high']:.2f}) | "
                     f"{c['b']:.2f}x ({c['b_low']:.2f}-{c['b_high']:.2f}) | {'yes' if c['a_in_b'] else '**no**'} | "
                     f"{'yes' if c['b_in_a'] else '**no**'} | {ideal} | {above} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="results.json of the first sweep")
    p.add_argument("b", help="results.json of the second sweep")
    args = p.parse_args(argv)
    with open(args.a) as f:
        a_rows = json.load(f)
    with open(args.b) as f:
        b_rows = json.load(f)
    if len(a_rows) != len(b_rows):
        raise SystemExit(f"{args.a} has {len(a_rows)} rows, {args.b} has {len(b_rows)}: not the same sweep")
    checks = compare(a_rows, b_rows)
    print(table(checks))
    both = sum(c["a_in_b"] and c["b_in_a"] for c in checks)
    either = sum(c["a_in_b"] or c["b_in_a"] for c in checks)
    above = [c["row"] for c in checks if c["above_ideal"]]
    misses = [f"{c['row']} {c['column']}" for c in checks if c["misses_1x"]]
    print(f"\n{both}/{len(checks)} ratios: each run's median inside the other's {checks[0]['kind']}; "
          f"{either}/{len(checks)} in at least one direction.")
    print(f"intervals wholly above their FLOP ideal: {', '.join(above) if above else 'none'}; "
          f"same-work intervals missing 1x: {', '.join(misses) if misses else 'none'}.")
    return 0 if both == len(checks) and not above else 1


if __name__ == "__main__":
    sys.exit(main())
