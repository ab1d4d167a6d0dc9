"""Writing a session's results: ``<timestamp>.json``, ``latest.md`` (tables) and ``latest.png`` (W1 chart)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

Metrics = dict[str, Any]
Row = tuple[str, str, Callable[[dict[str, Metrics]], str]]


def _num(value: Any) -> float:
    """A number, or the median of ``{"median": ...}``; NaN when absent."""
    if isinstance(value, dict):
        value = value.get("median")
    return float(value) if isinstance(value, int | float) else math.nan


def _fmt(value: Any, digits: int = 0) -> str:
    number = _num(value)
    return "-" if math.isnan(number) else f"{number:,.{digits}f}"


def columns(results: list[dict[str, Any]]) -> dict[str, dict[str, Metrics]]:
    """Metrics by column (Steady per setting, then each peer) and workload; failed entries left out."""
    out: dict[str, dict[str, Metrics]] = {}
    for entry in results:
        if entry.get("error") or entry.get("metrics") is None:
            continue
        label = entry["system"] + (f" ({entry['setting']})" if entry.get("setting") else "")
        out.setdefault(label, {})[entry["workload"]] = entry["metrics"]
    return out


def _w1_rate(m: dict[str, Metrics]) -> str:
    w1 = m.get("W1")
    if not w1:
        return "-"
    rate = w1.get("workflows_per_s")
    spread = f" [{_fmt(rate['min'])}-{_fmt(rate['max'])}]" if isinstance(rate, dict) and "min" in rate else ""
    return f"{_fmt(rate)} ({_fmt(w1.get('steps_per_s'))}){spread}"


def _w1_two_workers(m: dict[str, Metrics]) -> str:
    two = (m.get("W1") or {}).get("two_workers")
    if not two:
        return "-"
    rate = two["workflows_per_s"]
    return f"{_fmt(rate)} ({_fmt(_num(rate) * 3)}) [{_fmt(rate['min'])}-{_fmt(rate['max'])}]"


def _w1_latency(m: dict[str, Metrics]) -> str:
    lat = (m.get("W1") or {}).get("latency")
    return " / ".join(_fmt(lat.get(k), 1) for k in ("p50_ms", "p90_ms", "p99_ms")) if lat else "-"


def _w1_cpu(m: dict[str, Metrics]) -> str:
    cpu = (m.get("W1") or {}).get("cpu_ms_per_workflow")
    return f"{_fmt(cpu.get('worker'), 1)} / {_fmt(cpu.get('broker'), 1)}" if cpu else "-"


def _limit(m: dict[str, Metrics]) -> str:
    lim = m.get("limit")
    if not lim:
        return "-"
    share = lim.get("steady_w1_share")
    return f"{_fmt(lim.get('runs_per_s'))}" + (f" (Steady {100 * share:.1f}%)" if share is not None else "")


def _w2(m: dict[str, Metrics]) -> str:
    w2 = m.get("W2")
    if not w2:
        return "-"
    per = w2["per_run"]
    return f"{_fmt(per['p50_ms'])} / {_fmt(per['p99_ms'])} ({_fmt(w2.get('steps_per_s'))} steps/s)"


def _w3_start(m: dict[str, Metrics]) -> str:
    w3 = m.get("W3")
    if not w3:
        return "-"
    parked = f" / {_fmt(w3['parked_s'], 1)}" if "parked_s" in w3 else ""
    return f"{_fmt(w3.get('runs'))} runs: {_fmt(w3.get('start_s'), 1)}{parked}"


def _per_process(key: str, digits: int) -> Callable[[dict[str, Metrics]], str]:
    def show(m: dict[str, Metrics]) -> str:
        values = (m.get("W3") or {}).get(key)
        if not values:
            return "-"
        return " + ".join(f"{name} {_fmt(v, digits)}" for name, v in values.items())

    return show


def _w4(m: dict[str, Metrics]) -> str:
    w4 = m.get("W4")
    if not w4:
        return "-"
    late = w4["lateness"]
    return f"{_fmt(w4['runs'])} runs: {_fmt(late['p50_ms'])} / {_fmt(late['p99_ms'])} (max {_fmt(late['max_ms'])})"


def _w5_time(m: dict[str, Metrics]) -> str:
    w5 = m.get("W5")
    return f"{_fmt(w5['runs'])} runs: {_fmt(w5['recovery_s'], 1)} s" if w5 else "-"


def _w5_safety(m: dict[str, Metrics]) -> str:
    w5 = m.get("W5")
    if not w5:
        return "-"
    wrong = w5["runs"] - w5["runs_with_one_terminal_record"]
    return f"{w5['finished_steps_reexecuted']} / {wrong} (in flight run twice: {w5['in_flight_steps_run_twice']})"


ROWS: list[Row] = [
    ("W1 saturated, workflows/s (steps/s) [min-max]", ">= 1,030", _w1_rate),
    ("W1 saturated with 2 worker processes, workflows/s (steps/s) [min-max]", "", _w1_two_workers),
    ("W1 closed loop p50 / p90 / p99 ms", "p50 <= 6.9, p99 <= 15", _w1_latency),
    ("W1 CPU ms per workflow: worker / broker", "", _w1_cpu),
    ("Raw Kafka limit, W1 runs/s (Steady's share)", "share >= 50%", _limit),
    ("W2 fan-out 100, ms per run p50 / p99", "", _w2),
    ("W3 start calls acknowledged s / all parked s", "", _w3_start),
    ("W3 RSS MB, 30 s after the last parked", "worker < 200 at 100,000", _per_process("rss_mb", 0)),
    ("W3 idle CPU, % of a core", "worker < 2", _per_process("idle_cpu_pct", 1)),
    ("W4 timer lateness p50 / p99 ms", "p99 < 100", _w4),
    ("W5 recovery (new worker start to all done)", "<= 30 s", _w5_time),
    ("W5 finished steps re-executed / runs without exactly 1 terminal record", "0 / 0", _w5_safety),
]


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _written(session: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for entry in session["results"]:
        written = (entry.get("metrics") or {}).get("written") if entry["workload"] == "W1" else None
        if not written:
            continue
        runs = written["runs"]
        lines += ["", f"### What Steady wrote per W1 run ({entry['setting']})", ""]
        lines.append(
            f"Counted over {runs} runs (one warm-up included); {written['transactions']} worker transactions for "
            f"{runs - 1} runs ({written['transactions'] / max(1, runs - 1):.3f} per run)."
        )
        lines.append("")
        rows = []
        for topic, c in written.items():
            if not isinstance(c, dict):
                continue
            rows.append(
                [
                    topic,
                    f"{c['records'] / runs:.2f}",
                    f"{c['bytes'] / runs:,.0f}",
                    f"{c['avg_bytes']:,.0f}",
                    f"{c['markers']:,}",
                ]
            )
        lines += _table(["topic", "records/run", "bytes/run", "bytes/record", "txn markers (total)"], rows)
    return lines


def _breakdowns(session: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for entry in session["results"]:
        latency = ((entry.get("metrics") or {}).get("latency") or {}) if entry["workload"] == "W1" else {}
        legs = latency.get("breakdown_ms")
        if legs:
            parts = ", ".join(f"{k.replace('_', ' ')} {v} ms" for k, v in legs.items())
            lines.append(
                f"- {entry['system']} ({entry['setting']}): {parts}; "
                f"{latency.get('transactions_per_run')} transactions per run"
            )
    title = "### Where a closed-loop W1 run spends its time (medians, from when history records were written)"
    return ["", title, "", *lines]


def _peer_durability(session: dict[str, Any]) -> list[str]:
    seen: dict[str, str] = {}
    for e in session["results"]:
        if e["system"] != "steady" and not e.get("error"):
            seen.setdefault(e["system"] + (f" ({e['setting']})" if e.get("setting") else ""), e["durability"])
    return [f"- {label}: {durability}" for label, durability in seen.items()]


def markdown(session: dict[str, Any]) -> str:
    """The session as a markdown report."""
    cols = columns(session["results"])
    m, v = session["machine"], session["versions"]
    lines = [
        f"# Steady benchmarks, {session['started_at']} ({session['mode']} mode)",
        "",
        f"Command: `{session['command']}` (in `{session['cwd']}`), {session['duration_s']:.0f} s.",
        f"Machine: {m['cpu_count']} x {m['cpu_model']}, {m['memory_gib']} GiB, kernel {m['kernel']}, "
        f"load average at start {m['load_average_at_start']}.",
        f"Versions: Python {v['python']}, Kafka {v['kafka']} ({v['java']}), aiokafka {v['aiokafka']}, "
        f"Steady {v['steady']} (git {str(v['steady_git_head'])[:10]}, working tree may differ).",
        "",
        "Durability:",
        *[f"- steady ({name}): {d['summary']}" for name, d in session["durability"].items()],
        *_peer_durability(session),
        "",
        *_table(
            ["", "target", *cols], [[label, target, *(show(c) for c in cols.values())] for label, target, show in ROWS]
        ),
        *_breakdowns(session),
        *_written(session),
    ]
    failures = [e for e in session["results"] if e.get("error")]
    if failures or session.get("skipped"):
        lines += ["", "### Failed or skipped", ""]
        lines += [f"- {e['system']} {e['workload']} ({e.get('setting', '')}): {e['error']}" for e in failures]
        lines += [f"- {message}" for message in session.get("skipped", [])]
    lines += ["", f"Every figure, with its parameters: `{session['json_name']}`. Chart: `latest.png`.", ""]
    return "\n".join(lines)


def chart(session: dict[str, Any], path: Path) -> None:
    """W1 throughput (with the raw Kafka limit) and closed-loop latency per system and setting, as a PNG."""
    import matplotlib  # noqa: PLC0415 - only needed here; Agg must be chosen before pyplot loads

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    cols = columns(session["results"])
    names, rates, lows, highs, colors = [], [], [], [], []
    for label, metrics in cols.items():
        for key, name in (("W1", label), ("limit", f"raw Kafka\n{label.removeprefix('steady ')}")):
            if key not in metrics:
                continue
            rate = metrics[key].get("workflows_per_s" if key == "W1" else "runs_per_s")
            value = _num(rate)
            names.append(name.replace(" (", "\n("))
            colors.append("#4c72b0" if key == "W1" else "#8c8c8c")
            rates.append(value)
            spread = rate if isinstance(rate, dict) and "min" in rate else {"min": value, "max": value}
            lows.append(value - spread["min"])
            highs.append(spread["max"] - value)
    latency = {label: m["W1"]["latency"] for label, m in cols.items() if "W1" in m and m["W1"].get("latency")}
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    left.bar(range(len(names)), rates, yerr=[lows, highs], capsize=4, color=colors)
    left.set_xticks(range(len(names)), names, fontsize=8)
    left.set_ylabel("workflows/s (W1 chain, 3 steps)")
    left.set_title("W1 saturated throughput (median, min-max)")
    width = 0.25
    for i, (quantile, color) in enumerate((("p50_ms", "#55a868"), ("p90_ms", "#dd8452"), ("p99_ms", "#c44e52"))):
        xs = [n + (i - 1) * width for n in range(len(latency))]
        right.bar(xs, [_num(lat.get(quantile)) for lat in latency.values()], width, label=quantile[:3], color=color)
    right.set_xticks(range(len(latency)), [n.replace(" (", "\n(") for n in latency], fontsize=8)
    right.set_ylabel("ms, start call to result")
    right.set_title("W1 closed-loop latency")
    right.legend()
    fig.suptitle(
        f"Steady benchmarks {session['started_at']} ({session['mode']}), {session['machine']['cpu_count']} cores"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(session: dict[str, Any], out_dir: Path, stamp: str) -> Path:
    """Write ``<stamp>.json``, ``latest.md`` and ``latest.png`` into ``out_dir``; return the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{stamp}.json"
    session["json_name"] = path.name
    path.write_text(json.dumps(session, indent=2, default=str) + "\n")
    (out_dir / "latest.md").write_text(markdown(session))
    chart(session, out_dir / "latest.png")
    return path
