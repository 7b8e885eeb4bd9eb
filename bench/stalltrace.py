#!/usr/bin/env python3
"""What a shard's long loop turns are made of (issue 25): reads `perf script` of a system-wide
`perf record` (see bench/stall.sh TRACE=1) and splits the shard thread's time into running,
runnable-but-waiting-for-a-CPU (and who ran instead) and blocked (and where in the kernel).

Recorded events (stall.sh): sched:sched_switch and sched:sched_wakeup with kernel call chains,
syscalls:sys_enter/sys_exit_epoll_wait(+pwait) of the shard thread, cpu-clock samples every
250 us on every CPU, and ipi:ipi_send_cpu/ipi_send_cpumask (a static key flip patches kernel text
and synchronises every CPU with an IPI: the cause of the allocation-creation stall).

A *loop turn* of the shard is the time from one return of its driver poll (epoll_wait) to the
next call of it: the tasks polled in between keep every other task of the shard waiting (the
stall probe, turnkey_relay_shard_stall_seconds, measures the same thing from inside). When the
poll before slept, the turn starts at the wake-up, so the wait for a CPU after it counts too.

    perf script -i X.data -F comm,pid,tid,cpu,time,event,trace,ip,sym --ns \
        | bench/stalltrace.py --tid SHARD_TID --pid RELAY_PID [--over 0.003]

Prints the window's totals, then the longest turns (at least --over seconds, at most --top),
each with its running time (sampled: by syscall, page fault, interrupt work, user code),
runnable time (and what ran on each CPU meanwhile) and blocked time (by kernel function).
"""
import argparse
import bisect
import collections
import os
import re
import sys

HEAD = re.compile(r"^\s*(.+?)\s+(\d+)/(\d+)\s+\[(\d+)\]\s+(\d+\.\d+):\s+([^:]+(?::[^:\s]+)?):\s*(.*)$")
SWITCH = re.compile(r"prev_comm=(.*) prev_pid=(\d+) prev_prio=\d+ prev_state=(\S+) ==> next_comm=(.*) next_pid=(\d+)")
WAKEUP = re.compile(r"comm=(.*) pid=(\d+) prio=\d+ target_cpu=(\d+)")
SCHED_FRAMES = {
    "__schedule", "schedule", "schedule_timeout", "schedule_hrtimeout_range", "schedule_hrtimeout_range_clock",
    "schedule_preempt_disabled", "io_schedule", "io_schedule_timeout", "__cond_resched", "preempt_schedule",
    "preempt_schedule_common", "preempt_schedule_irq", "preempt_schedule_thunk", "__preempt_schedule",
    "do_nanosleep", "hrtimer_nanosleep", "schedule_timeout_uninterruptible", "schedule_idle",
}


def read_events(stream):
    """Yields (comm, pid, tid, cpu, t, event, trace, [kernel and user frame symbols], leaf in kernel)."""
    cur = None
    for line in stream:
        if line.startswith("\t") or (line.startswith(" ") and cur and not HEAD.match(line)):
            parts = line.split(None, 1)
            if cur is not None and len(parts) == 2:
                sym = parts[1].strip().split("+")[0]
                cur[7].append(sym)
                if len(cur[7]) == 1:  # where the leaf ran, from its address
                    cur = cur[:7] + (cur[7], parts[0].startswith("ffffffff"))
            continue
        m = HEAD.match(line)
        if not m:
            continue
        if cur is not None:
            yield cur
        comm, pid, tid, cpu, t, ev, trace = m.groups()
        cur = (comm, int(pid), int(tid), int(cpu), float(t), ev.strip(), trace, [], False)
    if cur is not None:
        yield cur


def group(comm, tid, relay_tids):
    """A name to sum time by: relay threads by their name, others by command without numbers."""
    if tid == 0:
        return "idle"
    if tid in relay_tids:
        return relay_tids[tid]
    if comm.startswith(("opt ", "lto ")) or comm in ("coordinator", "rustc", "rust-lld", "ld.lld", "cc", "as", "ar"):
        return "compilers"
    base = re.sub(r"[/:-]?\d+(:\d+)?(H)?$", "", comm)
    base = re.sub(r"/\d+$", "", base)
    return base or comm


def block_reason(frames):
    """Where a thread that left the CPU without being preempted waited, from its kernel stack."""
    syscall = next((f for f in frames if f.startswith("__x64_sys_") or f.startswith("__do_sys_")), None)
    first = next((f for f in frames if f not in SCHED_FRAMES and not f.startswith("0x")), "?")
    if syscall:
        syscall = syscall.replace("__x64_sys_", "").replace("__do_sys_", "")
    return f"{first} ({syscall})" if syscall else first


def run_reason(frames, kernel_leaf):
    """What a running sample of the shard was doing."""
    fs = set(frames)
    if fs & {"text_poke_bp_batch", "smp_text_poke_batch_finish", "arch_jump_label_transform_apply",
             "static_key_slow_dec", "static_key_slow_inc", "static_key_enable", "static_key_disable"}:
        return "kernel: static key flip (text patching, IPIs)"
    if "synchronize_rcu" in fs or "synchronize_rcu_normal" in fs:
        return "kernel: synchronize_rcu"
    if frames and frames[0] in ("irqentry_exit_to_user_mode", "finish_task_switch.isra.0", "finish_task_switch") \
            and kernel_leaf and not any(f.startswith("__x64_sys_") for f in frames):
        # A sample taken as interrupts are re-enabled: the time went to the interrupt (or to a
        # switch) just before; the guest cannot see further (host steal time included).
        return f"kernel: interrupt or switch return ({frames[0]})"
    if fs & {"asm_exc_page_fault", "exc_page_fault", "handle_mm_fault"}:
        return "kernel: page fault"
    if fs & {"handle_softirqs", "__do_softirq", "irq_exit_rcu", "sysvec_apic_timer_interrupt",
             "asm_sysvec_apic_timer_interrupt", "sysvec_call_function", "asm_common_interrupt"} and not any(
            f.startswith("__x64_sys_") for f in frames):
        return "kernel: interrupt/softirq"
    sysc = next((f for f in frames if f.startswith("__x64_sys_")), None)
    leaf = f" < {frames[0]}" if frames and kernel_leaf else ""
    if sysc:
        if "task_work_run" in fs or "__fput" in fs:
            return f"kernel: {sysc[10:]} (final fput: socket release){leaf}"
        return f"kernel: {sysc[10:]}{leaf}"
    if "task_work_run" in fs or "__fput" in fs:
        return "kernel: final fput (socket release, task_work)"
    leaf = frames[0] if frames else "?"
    if leaf.startswith("[unknown]") or leaf == "?":
        return "user: [unknown]"
    if frames and re.match(r"^[0-9a-f]{8,}$", leaf):
        return "user: ?"
    return ("kernel: " if kernel_leaf else "user: ") + leaf[:90]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tid", type=int, required=True, help="the shard thread")
    ap.add_argument("--pid", type=int, required=True, help="the relay process (its threads named)")
    ap.add_argument("--label", action="append", default=[], metavar="PID=NAME",
                    help="name another process's threads (e.g. the load generator)")
    ap.add_argument("--over", type=float, default=0.003, help="list loop turns at least this long (s)")
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--sample", type=float, default=250e-6, help="cpu-clock sample period (s)")
    args = ap.parse_args()
    relay_tids = {}  # tid -> name of the threads of the relay and of the --label processes
    for pid, name in [(args.pid, "relay")] + [tuple(x.split("=", 1)) for x in args.label]:
        try:
            for t in os.listdir(f"/proc/{pid}/task"):
                comm = open(f"/proc/{pid}/task/{t}/comm").read().strip()
                relay_tids[int(t)] = f"{name}:{re.sub(r'-?[0-9]+$', '', comm)}"
        except OSError:
            pass
    S = args.tid

    cpu_segs = collections.defaultdict(list)  # cpu -> [(start, group)] of what ran from then on
    samples = []  # (t, reason) of the shard
    ipis = collections.Counter()  # (relay thread, callback) -> IPIs sent
    shard = []  # (t, kind, detail): 'in' cpu, 'out' (state, reason), 'wake', 'enter', 'exit'
    first = last = None
    for comm, pid, tid, cpu, t, ev, trace, frames, kleaf in read_events(sys.stdin):
        first = t if first is None else first
        last = t
        if ev == "sched:sched_switch":
            m = SWITCH.search(trace)
            if not m:
                continue
            pcomm, ppid, state, ncomm, npid = m.group(1), int(m.group(2)), m.group(3), m.group(4), int(m.group(5))
            cpu_segs[cpu].append((t, group(ncomm, npid, relay_tids)))
            if ppid == S:
                shard.append((t, "out", (state, block_reason(frames))))
            if npid == S:
                shard.append((t, "in", cpu))
        elif ev == "sched:sched_wakeup":
            m = WAKEUP.search(trace)
            if m and int(m.group(2)) == S:
                # The task current where the wake-up ran: a thread of ours that woke the shard, or
                # whatever a timer or network interrupt interrupted.
                waker = relay_tids.get(tid, "an interrupt or another process")
                shard.append((t, "wake", waker))
        elif ev.startswith("syscalls:sys_enter_epoll") and tid == S:
            shard.append((t, "enter", None))
        elif ev.startswith("syscalls:sys_exit_epoll") and tid == S:
            shard.append((t, "exit", None))
        elif ev.startswith("cpu-clock") and tid == S:
            samples.append((t, run_reason(frames, kleaf)))
        elif ev.startswith("ipi:ipi_send_cpu") and tid in relay_tids and not relay_tids[tid].startswith(("redis", "load")):
            # Cross-CPU calls the relay asked for: text patching (a static key flipped:
            # callback text_poke_sync_each_cpu / do_sync_core), TLB shootdowns (flush_tlb_func), ...
            m = re.search(r"callback=(\S+)", trace)
            ipis[(relay_tids[tid], m.group(1).split("+")[0] if m else "?")] += 1
    if first is None or not shard:
        print("  trace: no events of the shard thread (was perf recording?)")
        return
    seg_times = {c: [s[0] for s in v] for c, v in cpu_segs.items()}
    sample_times = [s[0] for s in samples]

    def who_ran(a, b):
        """CPU time by group on every CPU over [a, b]."""
        out = collections.Counter()
        for c, segs in cpu_segs.items():
            times = seg_times[c]
            i = max(bisect.bisect_right(times, a) - 1, 0)
            while i < len(segs) and segs[i][0] < b:
                start = max(segs[i][0], a)
                end = min(segs[i + 1][0] if i + 1 < len(segs) else b, b)
                if end > start and not (i == 0 and segs[0][0] > a):
                    out[f"cpu{c} {segs[i][1]}"] += end - start
                i += 1
        return out

    # The shard's state over time: running / runnable / blocked(reason) / idle (asleep in the poll).
    spans = []  # (start, end, state, detail)
    state, since, detail, in_poll = None, shard[0][0], None, False
    def close(t):
        if state is not None and t > since:
            spans.append((since, t, state, detail))
    for t, kind, d in shard:
        if kind == "enter":
            in_poll = True
        elif kind == "exit":
            in_poll = False
        elif kind == "in":
            close(t); state, since, detail = "running", t, d
        elif kind == "out":
            st, why = d
            close(t)
            if st.startswith("R"):
                state, detail = "runnable", "preempted"
            elif in_poll:
                state, detail = "idle", None
            else:
                state, detail = "blocked", f"{st} {why}"
            since = t
        elif kind == "wake":
            if state in ("idle", "blocked"):
                close(t); state, since, detail = "runnable", t, f"woken by {d}"
    close(last)

    # Loop turns: poll return (or the wake-up ending a sleeping poll) to the next poll call.
    turns = []
    start, slept, wake_at = None, False, None
    for t, kind, d in shard:
        if kind == "enter":
            if start is not None:
                turns.append((start, t))
            start, slept, wake_at = None, False, None
        elif kind == "out" and not d[0].startswith("R"):
            slept = True
        elif kind == "wake":
            wake_at = t
        elif kind == "exit":
            start = wake_at if slept and wake_at is not None else t
    span_starts = [s[0] for s in spans]

    def compose(a, b):
        acc = collections.Counter()
        i = max(bisect.bisect_right(span_starts, a) - 1, 0)
        while i < len(spans) and spans[i][0] < b:
            s, e, st, det = spans[i]
            ov = min(e, b) - max(s, a)
            if ov > 0:
                acc[(st, det if st != "running" else None)] += ov
            i += 1
        return acc

    def describe(a, b, indent="    "):
        acc = compose(a, b)
        run = sum(v for (st, _), v in acc.items() if st == "running")
        wait = sum(v for (st, _), v in acc.items() if st == "runnable")
        blk = sum(v for (st, _), v in acc.items() if st == "blocked")
        print(f"{indent}running {run * 1e3:.2f} ms, runnable {wait * 1e3:.2f} ms, blocked {blk * 1e3:.2f} ms")
        lo, hi = bisect.bisect_left(sample_times, a), bisect.bisect_right(sample_times, b)
        reasons = collections.Counter(r for _, r in samples[lo:hi])
        for r, n in reasons.most_common(8):
            print(f"{indent}  running: {r}: {n} samples (~{n * args.sample * 1e3:.2f} ms)")
        for (st, det), v in sorted(acc.items(), key=lambda x: -x[1]):
            if st == "runnable":
                print(f"{indent}  runnable ({det}): {v * 1e3:.2f} ms")
        if wait > 0:
            ran = collections.Counter()
            for s, e, st, _ in spans:
                if st == "runnable" and e > a and s < b:
                    ran.update(who_ran(max(s, a), min(e, b)))
            top = ", ".join(f"{k} {v * 1e3:.2f}" for k, v in ran.most_common(6))
            print(f"{indent}  ran meanwhile (ms): {top}")
        for (st, det), v in sorted(acc.items(), key=lambda x: -x[1]):
            if st == "blocked":
                print(f"{indent}  blocked {det}: {v * 1e3:.2f} ms")

    dur = last - first
    print(f"  trace: {dur:.2f} s, {len(turns)} loop turns, {len(samples)} samples of the shard")
    describe(first, last, indent="  whole window: ")
    blocks = [(e - s, det) for s, e, st, det in spans if st == "blocked"]
    if blocks:
        b, det = max(blocks)
        print(f"  longest single block: {b * 1e3:.2f} ms, {det} ({len(blocks)} blocks)")
    wake_lat = [(e - s, s, e) for s, e, st, det in spans if st == "runnable" and det and det.startswith("woken")]
    if wake_lat:
        lat, s, e = max(wake_lat)
        print(f"  longest wait for a CPU after a wake-up: {lat * 1e3:.2f} ms; ran meanwhile (ms): "
              + ", ".join(f"{k} {v * 1e3:.2f}" for k, v in who_ran(s, e).most_common(4)))
    names = {"0x0": "reschedule", "generic_smp_call_function_single_interrupt": "queued wake-up/call",
             "flush_tlb_func": "TLB shootdown"}
    poke = sum(n for (_, cb), n in ipis.items() if "sync_core" in cb or "text_poke" in cb)
    print(f"  text-patching IPIs from the relay (a static key flipped): {poke}; all its IPIs: "
          + (", ".join(f"{th} {names.get(cb, cb)} {n}" for (th, cb), n in ipis.most_common(6)) or "none"))
    long_turns = sorted((t for t in turns if t[1] - t[0] >= args.over), key=lambda t: t[0] - t[1])
    hist = collections.Counter(min(int((b - a) * 1e3), 10) for a, b in turns)
    print("  loop turns by length (ms: count): " + ", ".join(
        f"{'>=' if k == 10 else ''}{k}-{k + 1 if k < 10 else ''}: {v}" for k, v in sorted(hist.items())))
    for a, b in long_turns[: args.top]:
        print(f"  turn of {(b - a) * 1e3:.2f} ms at +{a - first:.3f} s:")
        describe(a, b)


if __name__ == "__main__":
    main()
