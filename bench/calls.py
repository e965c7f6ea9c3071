#!/usr/bin/env python3
"""Calls during a saturating push, beside what the same link gives a raw ssh
echo under a raw load (issue 14 item 5). Driven by bench/run-calls, which
sets the link up.

For each run, on one link:
  ssh echo, idle    one byte at a time through `ssh HOST cat` (its own
                    connection), every 10 ms, timed to its echo
  ssh echo, loaded  the same while N raw `ssh HOST 'cat > /dev/null'` carry
                    the file (ferrogen's cipher, N = the streams ferrogen
                    used), after a ramp of 1.5 s; only echoes taken while
                    every loader still ran count
  ferrogen calls    tools/ferroprobe: `ferrogen.ping` calls on the primary
                    stream every 10 ms, idle before the push and loaded
                    during it
The ssh echo is what the link, ssh and these two cores give a byte that
waits behind nothing of ferrogen's: the floor under the goal (RTT + 2 ms at
p99).
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

GCM = 'aes128-gcm@openssh.com'


def q(ms, p):
    s = sorted(ms)
    return s[min(len(s) - 1, round((len(s) - 1) * p))]


class Echo:
    def __init__(self, ns, cfg, host):
        self.p = subprocess.Popen(['ip', 'netns', 'exec', ns, 'ssh', '-F', cfg, '-o', 'Compression=no',
                                   '-c', GCM, host, 'cat'],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        self.samples(5, 0.05)

    def one(self):
        t0 = time.perf_counter()
        os.write(self.p.stdin.fileno(), b'x')
        r, _, _ = select.select([self.p.stdout], [], [], 30)
        if not r or os.read(self.p.stdout.fileno(), 1) != b'x':
            raise SystemExit('ssh echo: no answer in 30 s')
        return (time.perf_counter() - t0) * 1000

    def samples(self, n, interval, keep=lambda: True):
        out = []
        next_at = time.perf_counter()
        for _ in range(n):
            ms = self.one()
            if keep():
                out.append(ms)
            next_at += interval
            time.sleep(max(0, next_at - time.perf_counter()))
        return out

    def close(self):
        self.p.stdin.close()
        self.p.wait(timeout=10)


def loaded_echo(a, streams):
    echo = Echo(a.ns, a.ssh_config, a.host)
    loaders = []
    try:
        for _ in range(streams):
            with open(a.src, 'rb') as f:
                loaders.append(subprocess.Popen(
                    ['ip', 'netns', 'exec', a.ns, 'ssh', '-F', a.ssh_config, '-o', 'Compression=no', '-c', GCM,
                     a.host, 'cat > /dev/null'], stdin=f))
        time.sleep(1.5)
        ms = echo.samples(a.calls, 0.01, keep=lambda: all(l.poll() is None for l in loaders))
    finally:
        for l in loaders:
            if l.poll() is None:
                l.kill()   # our own child, by its pid
            l.wait()
        echo.close()
    if len(ms) < a.calls // 2:
        raise SystemExit('ssh echo, loaded: the load ended after %d echoes: use a larger --mib' % len(ms))
    return ms


def main():
    ap = argparse.ArgumentParser()
    for k in ('--ns', '--ssh-config', '--host', '--link', '--src', '--dst', '--probe', '--ferrogen', '--out'):
        ap.add_argument(k, required=k != '--out')
    ap.add_argument('--rtt', type=float, required=True)
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--calls', type=int, default=400)
    ap.add_argument('--command-line', default='')
    a = ap.parse_args()
    rows = {k: [] for k in ('echo idle', 'echo loaded', 'calls idle', 'calls loaded')}
    streams = []
    for run in range(a.runs):
        echo = Echo(a.ns, a.ssh_config, a.host)
        idle = echo.samples(a.calls, 0.01)
        echo.close()
        rows['echo idle'].append(idle)
        probe = subprocess.run(['ip', 'netns', 'exec', a.ns, a.probe, '-H', a.host, '-e', 'ssh -F ' + a.ssh_config,
                                '--remote-binary', a.ferrogen, '--idle-calls', str(a.calls), '--calls',
                                str(a.calls), '--interval-ms', '10', a.src, a.dst + '/'],
                               capture_output=True, text=True, timeout=600)
        lines = [l for l in probe.stdout.splitlines() if l.startswith('{')]
        if probe.returncode != 0 or not lines:
            raise SystemExit('ferroprobe failed: %s' % probe.stderr[-2000:])
        r = json.loads(lines[-1])
        streams.append(r['streams'])
        os.unlink(os.path.join(a.dst, os.path.basename(a.src)))
        rows['calls idle'].append(r['idle'])
        rows['calls loaded'].append(r['loaded'])
        rows['echo loaded'].append(loaded_echo(a, max(1, r['streams'])))
        print('[calls] %s run %d: echo idle p99 %.2f, echo loaded p99 %.2f, calls idle p99 %.2f, '
              'calls loaded p99 %.2f (%d streams, %.0f MiB/s)' % (
                  a.link, run, q(idle, .99), q(rows['echo loaded'][-1], .99), r['idle']['p99_ms'],
                  r['loaded']['p99_ms'], r['streams'], r['push_mib_s']), file=sys.stderr, flush=True)

    def stat(samples, p):
        vals = [(s['p50_ms'] if p == .5 else s['p99_ms']) if isinstance(s, dict) else q(s, p) for s in samples]
        return '%.2f (%.2f–%.2f)' % (statistics.median(vals), min(vals), max(vals))

    def count(samples):
        return sum(s['count'] if isinstance(s, dict) else len(s) for s in samples)
    goal = a.rtt + 2
    text = ('%s link, RTT %g ms, %d runs, %d samples per run and row, 10 ms apart; median of the runs '
            '(min–max). ferrogen used %s streams; the loaded echo ran beside as many raw `ssh cat` '
            '(%s). Goal: loaded calls p99 ≤ RTT + 2 = %g ms. Command: `%s`.\n\n'
            '| what | p50 ms | p99 ms | samples |\n|---|---:|---:|---:|\n' % (
                a.link, a.rtt, a.runs, a.calls, '/'.join(map(str, streams)), GCM, goal, a.command_line))
    for k, label in (('echo idle', 'ssh echo, idle'), ('echo loaded', 'ssh echo beside raw `ssh cat` load'),
                     ('calls idle', 'ferrogen calls, idle'), ('calls loaded', 'ferrogen calls during the push')):
        text += '| %s | %s | %s | %d |\n' % (label, stat(rows[k], .5), stat(rows[k], .99), count(rows[k]))
    print(text)
    if a.out:
        with open(a.out, 'w') as f:
            f.write(text)


if __name__ == '__main__':
    main()
