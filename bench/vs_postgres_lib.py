#!/usr/bin/env python3
"""Helpers of bench/vs-postgres (standard library only, CPython 3.11).

Subcommands (each prints one JSON object on stdout, except `report`):

  fsync DIR SECONDS             fdatasync latency of 4 KiB appends (the floor's disk part), and
                                of 4 KiB overwrites in place, in a file under DIR
  rtt SECONDS                   loopback TCP round trip: ping-pong of 64-byte messages with an
                                echo server in another process
  sqlite-bulk DIR SECONDS WARMUP
                                local SQLite (WAL, synchronous=FULL): transactions of 1,000
                                rows of (client int, 64-char payload), for SECONDS after WARMUP
  pgbench OUT LOG_PREFIX RC ROWS_PER_TXN
                                figures of one pgbench run: throughput from its "tps = … (without
                                initial connection time)" line, p50/p99 from its per-transaction
                                logs, failed transactions, and its exit code
  keel OUT ERR RC               figures of one `keel bench --json` run (its last JSON line)
  cpu-snapshot FILE ROOT_PID    CPU times of the machine and of our processes (ROOT_PID's
                                descendants and the postgres user's), saved to FILE
  cpu-foreign FILE ROOT_PID     percentage of the machine's CPU capacity used by other processes
                                since cpu-snapshot (some other load ran if it is high)
  summary NAME FILE             one progress line for a result; exit status 3 if it failed
  report RESULTS_DIR [--markdown FILE]
                                the comparison table, the floor and the machine
"""

from __future__ import annotations

import glob
import json
import math
import multiprocessing
import os
import platform
import re
import socket
import sqlite3
import subprocess
import sys
import time


# Above this share of the machine's CPU (percent) used by other processes during a
# measurement, the report warns that something else was running.
BUSY_WARN = 10.0


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (as `keel bench` computes it)."""
    if not sorted_values:
        return None
    i = min(max(math.ceil(len(sorted_values) * q), 1), len(sorted_values)) - 1
    return sorted_values[i]


# ------------------------------------------------------------------------------------------
# The floor


def fsync_latency(directory: str, seconds: float) -> dict:
    """4 KiB write + fdatasync in a loop: appends (the file grows, as a log does) for
    `seconds`, then overwrites of one preallocated block for half as long."""
    block = os.urandom(4096)
    out: dict = {"dir": directory}
    for mode, duration in (("append", seconds), ("overwrite", seconds / 2)):
        path = os.path.join(directory, f"fsync-probe-{mode}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            if mode == "overwrite":
                os.write(fd, block)
                os.fsync(fd)
            samples = []
            end = time.perf_counter() + duration
            while time.perf_counter() < end:
                t0 = time.perf_counter()
                if mode == "append":
                    os.write(fd, block)
                else:
                    os.pwrite(fd, block, 0)
                os.fdatasync(fd)
                samples.append((time.perf_counter() - t0) * 1e3)
        finally:
            os.close(fd)
            os.unlink(path)
        samples.sort()
        out[f"{mode}_p50_ms"] = percentile(samples, 0.5)
        out[f"{mode}_p99_ms"] = percentile(samples, 0.99)
        out[f"{mode}_n"] = len(samples)
    out["p50_ms"] = out["append_p50_ms"]
    return out


def _echo_server(ready) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    ready.send(srv.getsockname()[1])
    conn, _ = srv.accept()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    while True:
        data = conn.recv(4096)
        if not data:
            break
        conn.sendall(data)
    conn.close()
    srv.close()


def loopback_rtt(seconds: float) -> dict:
    """Ping-pong of 64-byte messages over loopback TCP (TCP_NODELAY), server in another
    process; includes the Python interpreter's own overhead on both ends."""
    ctx = multiprocessing.get_context("fork")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_echo_server, args=(child,), daemon=True)
    server.start()
    try:
        port = parent.recv()
        c = socket.create_connection(("127.0.0.1", port))
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"p" * 64
        samples = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            c.sendall(msg)
            got = 0
            while got < len(msg):
                chunk = c.recv(4096)
                if not chunk:
                    raise RuntimeError("echo server closed the connection")
                got += len(chunk)
            samples.append((time.perf_counter() - t0) * 1e3)
        c.close()
    finally:
        server.join(5)
        if server.is_alive():
            server.terminate()
            server.join()
    samples.sort()
    return {
        "p50_ms": percentile(samples, 0.5),
        "p99_ms": percentile(samples, 0.99),
        "n": len(samples),
    }


def _cpu_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of the whole machine: busy is user + nice + system (interrupt
    time is left out: it is not charged to any process, and much of it is our own loopback
    traffic)."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    return fields[0] + fields[1] + fields[2], sum(fields[:8])


def _our_process_ticks(root: int) -> dict[str, int]:
    """CPU ticks (own and reaped children's) of our processes: descendants of `root` (this
    script: pgbench, keel bench, keel local and its nodes) and the postgres user's (the
    PostgreSQL servers, which pg_ctl detaches)."""
    try:
        import pwd

        pg_uid = pwd.getpwnam("postgres").pw_uid
    except (KeyError, ImportError):
        pg_uid = None
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
            uid = os.stat(f"/proc/{d}").st_uid
        except OSError:
            continue
        rest = stat[stat.rfind(")") + 2:].split()
        # rest[0] is field 3 (state): ppid is field 4, utime..cstime 14..17, starttime 22.
        procs[int(d)] = (
            int(rest[1]),
            uid,
            sum(int(x) for x in rest[11:15]),
            rest[19],
        )
    ours: dict[str, int] = {}
    for pid, (ppid, uid, ticks, start) in procs.items():
        mine = uid == pg_uid and pg_uid is not None
        p, hops = pid, 0
        while not mine and p > 1 and hops < 64:
            if p == root:
                mine = True
            p = procs[p][0] if p in procs else 0
            hops += 1
        if mine:
            ours[f"{pid}/{start}"] = ticks
    return ours


def cpu_snapshot(path: str, root: int) -> None:
    busy, total = _cpu_ticks()
    with open(path, "w") as f:
        json.dump({"busy": busy, "all": total, "ours": _our_process_ticks(root)}, f)


def cpu_foreign(path: str, root: int) -> float:
    """Percentage of the machine's CPU capacity used by processes other than ours since
    `cpu_snapshot`: some other load was running during the measurement if it is high."""
    with open(path) as f:
        before = json.load(f)
    busy, total = _cpu_ticks()
    ours_now = _our_process_ticks(root)
    ours = sum(t - before["ours"].get(k, 0) for k, t in ours_now.items())
    capacity = max(total - before["all"], 1)
    return max(0.0, min(100.0, 100.0 * (busy - before["busy"] - ours) / capacity))


# ------------------------------------------------------------------------------------------
# SQLite, locally


def sqlite_bulk(directory: str, seconds: float, warmup: float) -> dict:
    """Transactions of 1,000 single-row INSERTs (executemany, one prepared statement) into a
    WAL-mode database with synchronous=FULL, for `seconds` after `warmup`."""
    path = os.path.join(directory, "bulk.db")
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("PRAGMA synchronous = FULL")
    db.execute("CREATE TABLE bench (id INTEGER PRIMARY KEY, client INTEGER, payload TEXT)")
    rows = [(0, "x" * 64)] * 1000
    latencies: list[float] = []
    committed_rows = 0
    start = time.perf_counter()
    measure_from = start + warmup
    end = measure_from + seconds
    measured_start = None
    while True:
        t0 = time.perf_counter()
        if t0 >= end:
            break
        db.execute("BEGIN")
        db.executemany("INSERT INTO bench(client, payload) VALUES (?, ?)", rows)
        db.execute("COMMIT")
        t1 = time.perf_counter()
        if t0 >= measure_from:
            if measured_start is None:
                measured_start = t0
            latencies.append((t1 - t0) * 1e3)
            committed_rows += len(rows)
    elapsed = (time.perf_counter() - measured_start) if measured_start else 0.0
    db.close()
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass
    latencies.sort()
    return {
        "workload": "sqlite-bulk",
        "clients": 1,
        "requests": len(latencies),
        "errors": 0,
        "seconds": elapsed,
        "throughput_per_s": len(latencies) / elapsed if elapsed else 0.0,
        "rows_per_s": committed_rows / elapsed if elapsed else 0.0,
        "p50_ms": percentile(latencies, 0.5),
        "p99_ms": percentile(latencies, 0.99),
        "sqlite_version": sqlite3.sqlite_version,
    }


# ------------------------------------------------------------------------------------------
# Parsing the runs


def parse_pgbench(out_path: str, log_prefix: str, rc: int, rows_per_txn: int) -> dict:
    """pgbench 15's summary and its per-transaction logs (`-l --log-prefix`): one line per
    transaction, `client_id transaction_no time script_no time_epoch time_us [...]`, where
    `time` is the latency in microseconds, or `failed` / `skipped`."""
    text = open(out_path, errors="replace").read()
    result: dict = {"rc": rc}
    m = re.search(r"^tps = ([0-9.]+) \(without initial connection time\)", text, re.M)
    latencies: list[float] = []
    failed_in_log = 0
    for f in sorted(glob.glob(glob.escape(log_prefix) + ".*")):
        with open(f) as lines:
            for line in lines:
                parts = line.split()
                if len(parts) < 3:
                    continue
                if parts[2].isdigit():
                    latencies.append(int(parts[2]) / 1e3)
                elif parts[2] == "failed":
                    failed_in_log += 1
    latencies.sort()
    failed = re.search(r"^number of failed transactions: (\d+)", text, re.M)
    processed = re.search(r"^number of transactions actually processed: (\d+)", text, re.M)
    result["errors"] = int(failed.group(1)) if failed else failed_in_log
    result["requests"] = int(processed.group(1)) if processed else len(latencies)
    result["logged"] = len(latencies)
    if m:
        result["throughput_per_s"] = float(m.group(1))
        result["rows_per_s"] = float(m.group(1)) * rows_per_txn
    result["p50_ms"] = percentile(latencies, 0.5)
    result["p99_ms"] = percentile(latencies, 0.99)
    problems = []
    if rc != 0:
        problems.append(f"pgbench exited {rc}")
    if "aborted" in text.lower():
        problems.append("clients aborted")
    if not m:
        problems.append("no tps line")
    if not latencies:
        problems.append("no per-transaction log")
    if problems:
        tail = " | ".join(line for line in text.strip().splitlines()[-3:])
        result["failed"] = "; ".join(problems) + (f": {tail}" if tail else "")
    return result


def parse_keel(out_path: str, err_path: str, rc: int) -> dict:
    figures = None
    for line in open(out_path, errors="replace").read().splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                figures = json.loads(line)
            except json.JSONDecodeError:
                pass
    err = open(err_path, errors="replace").read().strip()
    if figures is None or rc != 0:
        figures = figures or {}
        tail = " | ".join(err.splitlines()[-3:]) or "no output"
        figures["failed"] = f"keel bench exited {rc}: {tail}"
    figures["rc"] = rc
    return figures


# ------------------------------------------------------------------------------------------
# The report


def load(results: str, name: str) -> dict | None:
    path = os.path.join(results, f"{name}.json")
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return {"failed": f"unreadable result ({e}): the run was interrupted?"}


def fmt_num(x: float) -> str:
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def fmt_ms(x: float | None) -> str:
    return "?" if x is None else (f"{x:.1f}" if x >= 10 else f"{x:.2f}")


def cell(r: dict | None, kind: str) -> tuple[str, float | None]:
    """The text of a table cell and the value compared. `kind`: `tput` (requests/s with
    p50/p99), `rows` (rows/s), `p50` (p50 latency in ms)."""
    if r is None:
        return "not run", None
    if r.get("na"):
        return f"n/a ({r['na']})", None
    if r.get("failed") and r.get("throughput_per_s") is None and r.get("p50_ms") is None:
        return "FAILED", None
    flag = " [FAILED]" if r.get("failed") else ""
    if kind == "tput":
        v = r.get("throughput_per_s")
        text = f"{fmt_num(v)}/s (p50 {fmt_ms(r.get('p50_ms'))}, p99 {fmt_ms(r.get('p99_ms'))} ms)"
    elif kind == "rows":
        v = r.get("rows_per_s")
        if v is None:
            return "FAILED (no rows_per_s)", None
        text = f"{fmt_num(v)} rows/s (p50 {fmt_ms(r.get('p50_ms'))} ms)"
    elif kind == "lag":
        # The worst learner's apply lag p99 (the leader's view, sampled every 20 ms).
        lags = [l for l in (r.get("lag") or {}).values() if l.get("p99_ms") is not None]
        if r.get("label"):
            v = r.get("p99_ms")
            text = f"{r['label']} {fmt_ms(v)} ms"
        elif not lags:
            return "FAILED (no lag samples)" if not r.get("failed") else "FAILED", None
        else:
            v = max(l["p99_ms"] for l in lags)
            rate = r.get("rate")
            text = (f"worst replica p99 {fmt_ms(v)} ms at "
                    f"{fmt_num(r.get('throughput_per_s') or 0)}/s"
                    + (f" (paced at {fmt_num(rate)}/s)" if rate else ""))
    else:
        v = r.get("p50_ms")
        if r.get("label"):
            text = f"{r['label']} {fmt_ms(v)} ms"
        else:
            text = f"p50 {fmt_ms(v)} ms (p99 {fmt_ms(r.get('p99_ms'))} ms)"
    return text + flag, v


def errors_of(r: dict | None) -> str:
    if r is None or r.get("na"):
        return "-"
    e = r.get("errors")
    s = "?" if e is None else str(e)
    if r.get("failed"):
        s += " (run failed)"
    return s


def render(header: list[str], rows: list[list[str]], markdown: bool) -> str:
    if markdown:
        out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        return "\n".join(out)
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip()
    out = [line(header), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in rows]
    return "\n".join(out)


def filesystem_of(path: str) -> str:
    try:
        out = subprocess.run(
            ["df", "-T", "-h", path], capture_output=True, text=True, check=True
        ).stdout.splitlines()[-1].split()
        # Filesystem Type Size Used Avail Use% Mounted-on
        return f"{out[1]} on {out[0]} mounted at {out[6]} ({out[4]} free of {out[2]})"
    except Exception as e:  # noqa: BLE001 - a description, never fatal
        return f"unknown ({e})"


def machine(path: str, info: dict) -> list[tuple[str, str]]:
    mem = "?"
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal:"):
                mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
    except OSError:
        pass
    cpu = "?"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return [
        ("cpus (nproc)", f"{os.cpu_count()} ({cpu})"),
        ("memory", mem),
        ("kernel", f"{platform.system()} {platform.release()} {platform.machine()}"),
        ("temp dir filesystem", f"{path}: {filesystem_of(path)}"),
        ("PostgreSQL", info.get("pg_version", "?")),
        ("keel", info.get("keel_version", "?")),
        ("SQLite (Python's sqlite3)", sqlite3.sqlite_version),
        ("durations", info.get("durations", "?")),
    ]


def ratio_text(keel: float | None, base: float | None) -> tuple[str, float | None]:
    if keel is None or base is None or base == 0:
        return "-", None
    r = keel / base
    return f"{r:.2f}x", r


def report(results: str, markdown_file: str | None) -> int:
    info = load(results, "info") or {}
    fs = load(results, "fsync")
    rtt = load(results, "rtt")
    floor = None
    if fs and rtt and fs.get("p50_ms") is not None and rtt.get("p50_ms") is not None:
        floor = {"p50_ms": 2 * fs["p50_ms"] + rtt["p50_ms"], "errors": 0, "label": "floor"}

    rows: list[list[str]] = []

    def row(name, keel, base, kind, goal=None, lower_is_better=False):
        kt, kv = cell(keel, kind)
        bt, bv = cell(base, kind)
        rt, r = ratio_text(kv, bv)
        if goal is None:
            goal_text, met = "(reference)", "-"
        else:
            goal_text = f"{'<=' if lower_is_better else '>='} {goal:g}x"
            if r is None:
                met = "?"
            else:
                met = "yes" if (r <= goal if lower_is_better else r >= goal) else "NO"
        rows.append([name, kt, bt, rt, goal_text, met, f"{errors_of(keel)} / {errors_of(base)}"])

    row("1. insert, 64 clients, semi-sync (PG: ANY 1, on)",
        load(results, "keel-insert-64"), load(results, "pg-insert-64"), "tput", 1.5)
    row("1b. insert, 16 clients, semi-sync (PG: ANY 1, on)",
        load(results, "keel-insert-16"), load(results, "pg-insert-16"), "tput", 1.5)
    row("2. insert, 64 clients, sync (PG: ANY 2, remote_apply)",
        load(results, "keel-insert-64-sync"), load(results, "pg-insert-64-sync"), "tput", 1.5)
    row("3. insert p50, 1 client, semi-sync, vs floor",
        load(results, "keel-insert-1"), floor, "p50", 1.5, lower_is_better=True)
    row("3b. insert p50, 1 client, semi-sync (PG: ANY 1)",
        load(results, "keel-insert-1"), load(results, "pg-insert-1"), "p50")
    row("4. bulk 1,000 rows/txn, 1 client, vs SQLite",
        load(results, "keel-bulk-1"), load(results, "sqlite-bulk"), "rows", 0.4)
    row("4b. bulk 1,000 rows/txn, 1 client (PG: ANY 1)",
        load(results, "keel-bulk-1"), load(results, "pg-bulk-1"), "rows")
    row("5. point reads, 16 clients, follower/standby (pgbench, PostgreSQL's protocol)",
        load(results, "keel-pg-read-16"), load(results, "pg-read-16"), "tput", 1.0)
    row("5b. point reads, 16 clients, follower (keel bench, HTTP)",
        load(results, "keel-read-16"), load(results, "pg-read-16"), "tput")

    row("6. fan-out: insert, 64 clients, 3 voters + 6 learners vs 3 voters",
        load(results, "keel-insert-64-fanout"), load(results, "keel-insert-64"), "tput", 0.8)

    row("7. apply lag p99 of every replica, 3 voters + 6 learners, half the row-6 load",
        load(results, "keel-lag-fanout"), {"p99_ms": 2.0, "errors": 0, "label": "goal"}, "lag",
        1.0, lower_is_better=True)

    header = ["workload", "Keel", "PostgreSQL / baseline", "ratio", "goal", "met?",
              "errors (Keel / baseline)"]

    floor_lines = []
    if fs:
        floor_lines.append(
            f"fdatasync of a 4 KiB append: p50 {fmt_ms(fs.get('append_p50_ms'))} ms, "
            f"p99 {fmt_ms(fs.get('append_p99_ms'))} ms ({fs.get('append_n')} samples); "
            f"overwrite in place: p50 {fmt_ms(fs.get('overwrite_p50_ms'))} ms "
            f"({fs.get('overwrite_n')} samples)")
    else:
        floor_lines.append("fdatasync: not measured")
    if rtt:
        floor_lines.append(
            f"loopback TCP round trip (Python ping-pong, 64 B): p50 {fmt_ms(rtt.get('p50_ms'))} ms, "
            f"p99 {fmt_ms(rtt.get('p99_ms'))} ms ({rtt.get('n')} samples)")
    else:
        floor_lines.append("loopback round trip: not measured")
    if floor:
        floor_lines.append(
            f"floor = 2 x fdatasync p50 + 1 round trip = {fmt_ms(floor['p50_ms'])} ms")
    notes = [
        "ratio = Keel / baseline (for row 3, Keel's p50 over the floor: lower is better).",
        "Keel figures: `keel bench --json` against `keel local` (3 voters); PostgreSQL: pgbench "
        "-M prepared -j 2 over TCP on 127.0.0.1 against a primary with two streaming standbys "
        "(s1, s2). Throughput is transactions (requests) per second; latencies per transaction.",
        "Row 5 drives both with pgbench and the same script; Keel serves it on a follower "
        "over PostgreSQL's wire protocol (`keel serve --pg-addr`). Row 5b is Keel's HTTP API "
        "with its own client.",
        "Row 4b's PostgreSQL figure is one INSERT of 1,000 VALUES rows per transaction under "
        "semi-sync (ANY 1). SQLite runs in this process, with no replication.",
        "Rows 6 and 7 compare Keel with itself: `keel local --learners 6` (3 voters, 6 learners) "
        "against row 1's 3 voters. Row 7 paces 64 clients at half of row 6's throughput "
        "(`keel bench --rate`) and takes the worst replica's apply lag p99 as the leader sees it "
        "(`/status`, sampled every 20 ms: the age of the oldest entry the replica has not "
        "reported applied).",
    ]
    failures = [f"{name[:-5]}: {r['failed']}" for name in sorted(os.listdir(results))
                if name.endswith(".json")
                for r in [load(results, name[:-5])] if r and r.get("failed")]
    mach = machine(info.get("tmp", "/tmp"), info)
    busy = {}
    for name in sorted(os.listdir(results)):
        if name.endswith(".busy"):
            try:
                busy[name[:-5]] = float(open(os.path.join(results, name)).read())
            except ValueError:
                pass
    if busy:
        notes.append("Share of the machine's CPU used by other processes during each "
                     "measurement: " + ", ".join(f"{k} {v:.0f}%" for k, v in busy.items()))
    warnings = [f"{k}: other processes used {v:.0f}% of the machine's CPU during it"
                for k, v in busy.items() if v > BUSY_WARN]

    text = ["", render(header, rows, False), notes[0], ""]
    text += floor_lines + [""]
    text += [f"{k}: {v}" for k, v in mach]
    if warnings:
        text += ["", "WARNING: other load on the machine; these figures are not comparable:"]
        text += [f"  {w}" for w in warnings]
    if failures:
        text += ["", "failures:"] + [f"  {f}" for f in failures]
    print("\n".join(text))

    if markdown_file:
        md = ["# Keel vs PostgreSQL", "", render(header, rows, True), "", "## The floor", ""]
        md += [f"- {l}" for l in floor_lines]
        md += ["", "## The machine", ""] + [f"- {k}: {v}" for k, v in mach]
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
        if warnings:
            md += ["", "## Warning: other load on the machine", ""] + [f"- {w}" for w in warnings]
        if failures:
            md += ["", "## Failures", ""] + [f"- {f}" for f in failures]
        with open(markdown_file, "w") as f:
            f.write("\n".join(md) + "\n")
    return 0


def summary(name: str, path: str) -> int:
    with open(path) as f:
        r = json.load(f)
    parts = []
    if r.get("throughput_per_s") is not None:
        parts.append(f"{fmt_num(r['throughput_per_s'])}/s")
    if r.get("rows_per_s") is not None:
        parts.append(f"{fmt_num(r['rows_per_s'])} rows/s")
    if r.get("p50_ms") is not None:
        parts.append(f"p50 {fmt_ms(r['p50_ms'])} ms, p99 {fmt_ms(r.get('p99_ms'))} ms")
    if r.get("errors") is not None:
        parts.append(f"{r['errors']} errors")
    if r.get("failed"):
        parts.append(f"FAILED: {r['failed']}")
    print(f"  {name}: " + ", ".join(parts))
    return 3 if r.get("failed") else 0


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, args = argv[0], argv[1:]
    if cmd == "fsync":
        print(json.dumps(fsync_latency(args[0], float(args[1]))))
    elif cmd == "rtt":
        print(json.dumps(loopback_rtt(float(args[0]))))
    elif cmd == "sqlite-bulk":
        print(json.dumps(sqlite_bulk(args[0], float(args[1]), float(args[2]))))
    elif cmd == "pgbench":
        print(json.dumps(parse_pgbench(args[0], args[1], int(args[2]), int(args[3]))))
    elif cmd == "keel":
        print(json.dumps(parse_keel(args[0], args[1], int(args[2]))))
    elif cmd == "cpu-snapshot":
        cpu_snapshot(args[0], int(args[1]))
    elif cmd == "cpu-foreign":
        print(f"{cpu_foreign(args[0], int(args[1])):.0f}")
    elif cmd == "summary":
        return summary(args[0], args[1])
    elif cmd == "report":
        md = None
        if len(args) >= 3 and args[1] == "--markdown":
            md = args[2]
        return report(args[0], md)
    else:
        print(f"unknown subcommand {cmd}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
