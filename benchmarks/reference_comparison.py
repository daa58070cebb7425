"""reference_benchmark.py's bookkeeping, apart from its flags and processes: the order the
measurements run in, their summary per estimator and side, the ratios, the report.

A run is {"estimator", "side" ("ours" or "reference"), "started", "ended", "result"}; its result
is {"s_per_iteration", "first_call_s", "peak_rss_mb", "raw"} or {"error"}.
"""

import statistics

SIDES = ("ours", "reference")
# Our estimator -> the reference_bench.py mode that computes the same architecture gradient.
REFERENCE_MODES = {"first_order": "first", "second_order": "second", "amended": "amended"}


def schedule(estimators, repeats):
    """(estimator, side) in the order they run: each estimator's pair alternately, ours
    first, `repeats` times, before the next estimator."""
    return [(estimator, side) for estimator in estimators for _ in range(repeats) for side in SIDES]


def summary(runs, batch_size):
    """One side's runs of one estimator: the median s/iteration and first call, the maximum
    peak RSS, images/s at the median (or the first failed run's error)."""
    for run in runs:
        if "error" in run["result"]:
            return {"error": run["result"]["error"]}
    s_per_iteration = statistics.median(r["result"]["s_per_iteration"] for r in runs)
    return {
        "s_per_iteration": s_per_iteration,
        "images_per_s": batch_size / s_per_iteration,
        "first_call_s": statistics.median(r["result"]["first_call_s"] for r in runs),
        "peak_rss_mb": max(r["result"]["peak_rss_mb"] for r in runs),
    }


def _ratio(numerator, denominator, key):
    if numerator is None or denominator is None or key not in numerator or key not in denominator:
        return None
    return numerator[key] / denominator[key]


def rows(runs, estimators, batch_size):
    """Per estimator: both sides' summaries and the ratios of ours to the reference's (same
    estimator), to the reference's second order and to our first order (None where one side
    was not run or failed)."""
    summaries = {
        (estimator, side): summary(
            [r for r in runs if (r["estimator"], r["side"]) == (estimator, side)], batch_size
        )
        for estimator in estimators
        for side in SIDES
    }
    reference_second = summaries.get(("second_order", "reference"))
    our_first = summaries.get(("first_order", "ours"))
    result = []
    for estimator in estimators:
        ours, reference = summaries[estimator, "ours"], summaries[estimator, "reference"]
        result.append(
            {
                "estimator": estimator,
                "ours": ours,
                "reference": reference,
                "x_reference": _ratio(ours, reference, "s_per_iteration"),
                "rss_x_reference": _ratio(ours, reference, "peak_rss_mb"),
                "x_reference_second_order": _ratio(ours, reference_second, "s_per_iteration"),
                "rss_x_reference_second_order": _ratio(ours, reference_second, "peak_rss_mb"),
                "x_our_first_order": _ratio(ours, our_first, "s_per_iteration"),
            }
        )
    return result


_MEASURES = (  # (key, column title, decimals)
    ("s_per_iteration", "s/iteration", 3),
    ("images_per_s", "images/s", 1),
    ("first_call_s", "first call s", 1),
    ("peak_rss_mb", "peak RSS MB", 0),
)
_RATIOS = (
    ("x_reference", "x ref"),
    ("rss_x_reference", "RSS x ref"),
    ("x_reference_second_order", "x ref 2nd order"),
    ("rss_x_reference_second_order", "RSS x ref 2nd order"),
    ("x_our_first_order", "x our 1st order"),
)


def _measure_cell(side, key, digits):
    if "error" in side:
        return f"failed: {side['error']}" if key == "s_per_iteration" else "failed"
    return f"{side[key]:,.{digits}f}"


def _ratio_cell(ratio):
    if ratio is None:
        return ""
    return f"{ratio:.2f}" if ratio >= 0.1 else f"{ratio:.2g}"  # small ones keep two digits


def table(result_rows):
    """The rows as a Markdown table: each measure for ours and the reference, then ratios."""
    titles = ["estimator"]
    for _, title, _ in _MEASURES:
        titles += [f"{title} ours", "ref"]
    titles += [title for _, title in _RATIOS]
    lines = ["| " + " | ".join(titles) + " |", "|---" * len(titles) + "|"]
    for row in result_rows:
        cells = [row["estimator"]]
        for key, _, digits in _MEASURES:
            cells += [_measure_cell(row[side], key, digits) for side in SIDES]
        cells += [_ratio_cell(row[key]) for key, _ in _RATIOS]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def text_report(header, result_rows):
    """The date, CPUs, load averages and configuration of `header`, then the table."""
    c = header["configuration"]
    load = ", ".join(
        f"{when} {' '.join(f'{x:.2f}' for x in header[f'load_average_{when}'])}"
        for when in ("start", "end")
    )
    return (
        f"{header['date']}, {header['cpus']} CPUs, load average (1, 5, 15 min) at {load}\n"
        f"C={c['channels']}, {c['cells']} cells, {c['nodes']} nodes, batch {c['batch_size']}, "
        f"{c['image_size']}x{c['image_size']}x{c['image_channels']}, {header['threads']} "
        f"threads each, {header['steps']} timed iterations x {header['repeats']} repeats, "
        f"our products {header['products']}, our sub-batches {header.get('sub_batches', 1)}"
        "\n\n" + table(result_rows)
    )
