#!/usr/bin/env python3
"""The fleet benchmark (issue 13, item 5). Run through bench/run-fleet, which
builds ferrogen, installs the contenders, brings the fleet up (bench/fleet-up)
and tears it down afterwards; this file only measures and reports.

Against a fleet of N hosts behind one relay (the controller reaches the relay
over the emulated uplink; the hosts sit on a fast bridge behind it), it pushes
one large file and a directory of small files to the first 1, 8, 32 hosts
with each contender and records, per run:

* wall time of the whole command (connections, authentication, transfer);
* bytes over the uplink, from the TUN devices' counters at both ends
  (controller -> relay is the payload direction);
* peak memory on the relay: the largest VmHWM of any process in the relay's
  namespace and the peak of the sum of their VmRSS, sampled every 100 ms;
* a check on every host: the destination tree (read inside the host's own
  mount namespace) must equal the source, file by file (SHA-256).

Flat contenders (clush, pdcp, ansible) open one ssh connection per host from
the controller, routed through the relay, so each host's copy crosses the
uplink; ferrogen and `clush` in tree mode hop through the relay's sshd.
"""
import argparse
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

MiB = 1048576.0
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = '## A fleet behind a relay (issue 13)'

CONTENDERS = [
    ('ferrogen', 'ferrogen `--via relay`'),
    ('ferrogen-notee', 'ferrogen `--via relay`, tee off'),
    ('clush', '`clush --copy`, flat'),
    ('clush-tree', '`clush --copy`, tree (relay as gateway)'),
    ('pdcp', '`pdcp -R ssh`'),
    ('ansible', 'Ansible `copy`'),
    ('ansible-mitogen', 'Ansible `copy`, Mitogen strategy'),
]
LABEL = dict(CONTENDERS)


def log(msg):
    print('[fleet %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def read_env(path):
    env = {}
    for line in open(path):
        k, _, v = line.strip().partition('=')
        if k:
            env[k] = v.strip('"')
    return env


# ------------------------------------------------------------------ namespaces, processes

def ns_inode(name):
    return os.stat('/run/netns/' + name).st_ino


def pid_netns(pid):
    try:
        link = os.readlink('/proc/%d/ns/net' % pid)
    except OSError:
        return None
    m = re.match(r'net:\[(\d+)\]', link)
    return int(m.group(1)) if m else None


def pids_in(inodes):
    """{pid: netns inode} for every process in one of `inodes`."""
    out = {}
    for d in os.listdir('/proc'):
        if d.isdigit():
            ino = pid_netns(int(d))
            if ino in inodes:
                out[int(d)] = ino
    return out


def status_kib(pid, field):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith(field):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def comm(pid):
    try:
        return open('/proc/%d/comm' % pid).read().strip()
    except OSError:
        return '?'


class RelayMemory(threading.Thread):
    """Samples every process in the relay's namespace (the sshd listener
    excluded): the largest VmHWM seen (a process's own high-water mark, so a
    sample after its peak is enough) and the peak of the sum of VmRSS."""

    def __init__(self, inode, exclude, interval=0.1):
        super().__init__(daemon=True)
        self.inode, self.exclude, self.interval = inode, set(exclude), interval
        self.stop_ev = threading.Event()
        self.hwm = {}          # pid -> (kib, comm)
        self.cpu = {}          # pid -> CPU ticks (user + system), last seen
        self.peak_sum = 0

    def run(self):
        while True:
            total = 0
            for d in os.listdir('/proc'):
                if not d.isdigit():
                    continue
                pid = int(d)
                if pid in self.exclude:
                    continue
                if pid not in self.hwm and pid_netns(pid) != self.inode:
                    continue
                rss = status_kib(pid, 'VmRSS:')
                hwm = status_kib(pid, 'VmHWM:')
                if hwm is None:
                    continue
                total += rss or 0
                try:
                    f = open('/proc/%d/stat' % pid).read().rsplit(')', 1)[1].split()
                    self.cpu[pid] = max(self.cpu.get(pid, 0), int(f[11]) + int(f[12]))
                except (OSError, IndexError, ValueError):
                    pass
                old = self.hwm.get(pid, (0, None))
                if hwm >= old[0]:
                    self.hwm[pid] = (hwm, comm(pid))
            self.peak_sum = max(self.peak_sum, total)
            if self.stop_ev.wait(self.interval):
                return

    def result(self):
        self.stop_ev.set()
        self.join()
        cpu_s = round(sum(self.cpu.values()) / os.sysconf('SC_CLK_TCK'), 1)
        if not self.hwm:
            return {'relay_max_mib': 0.0, 'relay_max_comm': '-', 'relay_sum_mib': 0.0, 'relay_procs': 0,
                    'relay_cpu_s': 0.0}
        kib, name = max(self.hwm.values(), key=lambda v: v[0])
        by_comm = {}
        for k, c in self.hwm.values():
            by_comm[c] = max(by_comm.get(c, 0), k)
        return {'relay_by_comm_kib': by_comm,'relay_max_mib': round(kib / 1024.0, 1), 'relay_max_comm': name,
                'relay_sum_mib': round(self.peak_sum / 1024.0, 1), 'relay_procs': len(self.hwm),
                # CPU of the relay's processes (its ferrogen or python, the
                # ssh clients to the hosts): what a real relay would spend.
                'relay_cpu_s': cpu_s}


def link_bytes(ns, dev):
    p = '/sys/class/net/%s/statistics/' % dev
    out = subprocess.run(['ip', 'netns', 'exec', ns, 'cat', p + 'tx_bytes', p + 'rx_bytes'],
                         check=True, stdout=subprocess.PIPE, text=True).stdout.split()
    return int(out[0]), int(out[1])


# ------------------------------------------------------------------ hosts

CHECK = r'''
import hashlib, json, os, sys
root = sys.argv[1]
out = {}
for d, dirs, files in os.walk(root):
    for f in files:
        p = os.path.join(d, f)
        h = hashlib.sha256()
        with open(p, 'rb') as fh:
            for b in iter(lambda: fh.read(1 << 20), b''):
                h.update(b)
        out[os.path.relpath(p, root)] = h.hexdigest()
print(json.dumps(out))
'''


class Fleet:
    def __init__(self, state):
        self.env = read_env(os.path.join(state, 'fleet.env'))
        self.state = state
        self.cfg = self.env['FGF_SSH_CONFIG']
        self.mnt = self.env['FGF_MNT']
        self.dest = self.mnt + '/dest'
        self.hosts = self.env['FGF_HOSTS'].split()
        self.ns_ctl, self.ns_relay = self.env['FGF_NS_CTL'], self.env['FGF_NS_RELAY']
        self.sshd = {h: int(open(os.path.join(state, 'hosts', h, 'sshd.pid')).read()) for h in self.hosts}
        self.relay_sshd = int(self.env['FGF_RELAY_SSHD_PID'])
        self.ino_ctl, self.ino_relay = ns_inode(self.ns_ctl), ns_inode(self.ns_relay)
        self.ino_hosts = {ns_inode('fgf-' + h) for h in self.hosts}
        self.listeners = set(self.sshd.values()) | {self.relay_sshd, int(self.env['FGF_DELAYLINE_PID'])}

    def in_host(self, h, argv, **kw):
        return subprocess.run(['nsenter', '-t', str(self.sshd[h]), '-m', '--'] + argv, **kw)

    def clear(self, hosts):
        for h in hosts:
            self.in_host(h, ['sh', '-c', 'rm -rf "$1" && mkdir -p "$1"', 'sh', self.dest], check=True)

    def tree(self, h):
        r = self.in_host(h, ['python3', '-c', CHECK, self.dest], stdout=subprocess.PIPE, text=True, check=True)
        return json.loads(r.stdout)

    def leftovers(self, grace=5.0):
        """Processes this run left in the fleet's namespaces (ControlPersist
        masters, lingering gateways): waited for, then killed by pid."""
        inos = {self.ino_ctl, self.ino_relay} | self.ino_hosts
        deadline = time.time() + grace
        while True:
            left = [p for p in pids_in(inos) if p not in self.listeners]
            if not left:
                return []
            if time.time() >= deadline:
                names = ['%d %s' % (p, comm(p)) for p in left]
                for p in left:
                    try:
                        os.kill(p, signal.SIGKILL)
                    except OSError:
                        pass
                return names
            time.sleep(0.2)


# ------------------------------------------------------------------ data

def make_data(root, large_mib, small):
    os.makedirs(root, exist_ok=True)
    big = os.path.join(root, 'big.bin')
    if not os.path.exists(big) or os.path.getsize(big) != large_mib * 1048576:
        # incompressible, so no contender gains from ssh or zstd compression
        with open(big, 'wb') as f:
            for _ in range(large_mib):
                f.write(os.urandom(1048576))
    sd = os.path.join(root, 'small')
    shutil.rmtree(sd, ignore_errors=True)
    os.makedirs(sd)
    for i in range(small):
        with open(os.path.join(sd, 'f%04d' % i), 'wb') as f:
            f.write(os.urandom(1024))

    def digests(base, top):
        out = {}
        for d, _, files in os.walk(top):
            for fn in files:
                p = os.path.join(d, fn)
                out[os.path.relpath(p, base)] = hashlib.sha256(open(p, 'rb').read()).hexdigest()
        return out
    return {'large': (big, {'big.bin': hashlib.sha256(open(big, 'rb').read()).hexdigest()}, large_mib * MiB),
            'small': (sd, digests(root, sd), small * 1024.0)}


# ------------------------------------------------------------------ contenders

def nodeset(hosts):
    return ','.join(hosts)


def command(a, fl, c, kind, src, hosts, work):
    """argv and extra environment of contender `c` pushing `src` into the
    hosts' destination directory."""
    cfg = fl.cfg
    env = {}
    rec = kind == 'small'
    if c in ('ferrogen', 'ferrogen-notee'):
        argv = [a.ferrogen, 'push'] + (['-r'] if rec else []) + [src, fl.dest + '/', '--via', 'relay']
        for h in hosts:
            argv += ['-H', h]
        argv += ['-e', 'ssh -F %s' % cfg]
        if c == 'ferrogen-notee':
            argv.append(a.no_tee_flag)
    elif c in ('clush', 'clush-tree'):
        argv = ['clush', '-w', nodeset(hosts), '-o', '-F %s' % cfg, '-f', str(max(len(hosts), 1)),
                '--copy', src, '--dest', fl.dest + '/']
        if c == 'clush-tree':
            topo = os.path.join(work, 'topology.conf')
            with open(topo, 'w') as f:
                f.write('[routes]\n%s: relay\nrelay: %s\n' % (a.root_name, nodeset(hosts)))
            argv[1:1] = ['--topology', topo]
    elif c == 'pdcp':
        argv = ['pdcp', '-R', 'ssh', '-f', str(max(len(hosts), 1)), '-w', nodeset(hosts)] + \
            (['-r'] if rec else []) + [src, fl.dest + '/']
        env['PDSH_SSH_ARGS'] = '-F %s %%h' % cfg
    elif c in ('ansible', 'ansible-mitogen'):
        inv = os.path.join(work, 'inventory.ini')
        with open(inv, 'w') as f:
            f.write('[fleet]\n' + ''.join('%s\n' % h for h in hosts))
        cp = os.path.join(work, 'cp')
        os.makedirs(cp, exist_ok=True)
        argv = [os.path.join(a.venv_bin, 'ansible'), 'fleet', '-i', inv, '-f', str(max(len(hosts), 1)),
                '-m', 'ansible.builtin.copy', '-a', 'src=%s dest=%s/' % (src, fl.dest), '-o']
        env.update({
            'ANSIBLE_HOST_KEY_CHECKING': 'False',
            # Ansible's own default ssh arguments, plus our config
            'ANSIBLE_SSH_ARGS': '-F %s -o ControlMaster=auto -o ControlPersist=60s' % cfg,
            'ANSIBLE_SSH_CONTROL_PATH_DIR': cp,
            'ANSIBLE_PYTHON_INTERPRETER': '/usr/bin/python3',
            'ANSIBLE_LOCAL_TEMP': os.path.join(work, 'ansible-tmp'),
            'ANSIBLE_HOME': os.path.join(work, 'ansible-home'),
            'ANSIBLE_NOCOLOR': '1',
            'ANSIBLE_DEPRECATION_WARNINGS': 'False',
        })
        if c == 'ansible-mitogen':
            env['ANSIBLE_STRATEGY_PLUGINS'] = a.mitogen_strategy
            env['ANSIBLE_STRATEGY'] = 'mitogen_linear'
    else:
        raise SystemExit('unknown contender %s' % c)
    return argv, env


def cpu_jiffies():
    """(busy, idle) jiffies of the whole machine, from /proc/stat."""
    f = [int(x) for x in open('/proc/stat').readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = f
    return user + nice + system + irq + softirq + steal, idle + iowait


def one_run(a, fl, c, kind, data, hosts, work):
    src, expect, payload = data[kind]
    cut = a.timeout_small if kind == 'small' and a.timeout_small else a.timeout
    fl.clear(hosts)
    argv, extra = command(a, fl, c, kind, src, hosts, work)
    env = dict(os.environ, **extra)
    full = ['ip', 'netns', 'exec', fl.ns_ctl] + argv
    load = os.getloadavg()[0]
    c0 = link_bytes(fl.ns_ctl, 'fgft-ctl')
    r0 = link_bytes(fl.ns_relay, 'fgft-relay')
    mem = RelayMemory(fl.ino_relay, fl.listeners)
    mem.start()
    cpu0 = cpu_jiffies()
    t0 = time.monotonic()
    logf = open(os.path.join(work, 'run.log'), 'w')
    p = subprocess.Popen(full, env=env, cwd=work, stdout=logf, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    timed_out = False
    try:
        rc = p.wait(timeout=cut)
    except subprocess.TimeoutExpired:
        timed_out = True
        os.killpg(p.pid, signal.SIGTERM)
        try:
            rc = p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            rc = p.wait()
    secs = time.monotonic() - t0
    cpu1 = cpu_jiffies()
    busy, idle = cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]
    m = mem.result()
    c1 = link_bytes(fl.ns_ctl, 'fgft-ctl')
    r1 = link_bytes(fl.ns_relay, 'fgft-relay')
    logf.close()
    left = fl.leftovers()
    bad = []
    for h in hosts:
        try:
            got = fl.tree(h)
        except (subprocess.CalledProcessError, ValueError) as e:
            bad.append('%s: %s' % (h, e))
            continue
        if got != expect:
            miss = len(set(expect) - set(got))
            wrong = sum(1 for k in expect if k in got and got[k] != expect[k])
            extra_ = len(set(got) - set(expect))
            bad.append('%s: %d missing, %d differ, %d extra' % (h, miss, wrong, extra_))
    tail = open(os.path.join(work, 'run.log'), errors='replace').read()[-1500:]
    rec = {
        'contender': c, 'kind': kind, 'hosts': len(hosts), 'seconds': round(secs, 2), 'rc': rc,
        'timeout': timed_out, 'cut_s': cut, 'payload_bytes': payload,
        'up_bytes': c1[0] - c0[0], 'down_bytes': c1[1] - c0[1],
        'relay_rx_bytes': r1[1] - r0[1], 'relay_tx_bytes': r1[0] - r0[0],
        'ok': not bad and rc == 0 and not timed_out, 'bad_hosts': bad, 'leftovers': left,
        'load1': round(load, 2),
        # The whole machine (every namespace shares its cores): how busy
        # the CPUs were during the run, and the CPU seconds spent.
        'cpu_busy_pct': round(100.0 * busy / max(1, busy + idle), 1),
        'cpu_s': round(busy / os.sysconf('SC_CLK_TCK'), 1),
    }
    rec.update(m)
    if not rec['ok']:
        rec['log_tail'] = tail
    return rec


# ------------------------------------------------------------------ report

def fmt_s(r):
    if r.get('timeout'):
        return '> %d (cut)' % r['seconds']
    if r.get('runs', 1) > 1:
        return '%.1f (%.1f–%.1f, %d runs)' % (r['seconds'], r['min_s'], r['max_s'], r['runs'])
    return '%.1f' % r['seconds']


def aggregate(results):
    """One record per (kind, hosts, contender): with --repeat, the run of
    median wall time, with the range and the number of runs; a row is ok
    only if every run was."""
    groups = {}
    for r in results:
        groups.setdefault((r['kind'], r['hosts'], r['contender']), []).append(r)
    out = []
    for rs in groups.values():
        rs = sorted(rs, key=lambda r: r['seconds'])
        med = dict(rs[(len(rs) - 1) // 2])
        if len(rs) > 1:
            med.update(runs=len(rs), min_s=rs[0]['seconds'], max_s=rs[-1]['seconds'],
                       ok=all(r['ok'] for r in rs))
            if len(rs) % 2 == 0:
                med['seconds'] = round((rs[len(rs) // 2 - 1]['seconds'] + rs[len(rs) // 2]['seconds']) / 2, 2)
        out.append(med)
    return out


def table(a, results, meta):
    results = aggregate(results)
    L = [SECTION, '']
    L.append('`%s` on %s; %s. One run each unless the wall time shows a median (range, runs). Uplink: %g ms RTT, %g Mbit/s (tools/delayline); '
             'hosts on a bridge behind the relay, each with its own sshd and tmpfs. Payloads: one %d MiB '
             'file (random) and %d × 1 KiB files. **Wall** is the whole command; **uplink ↓** is what '
             'the controller sent over the uplink (its TUN device\'s tx bytes; × = multiples of the '
             'payload), **↑** the reverse; **relay RSS** is the largest VmHWM of any one process in '
             'the relay\'s namespace (its command) / the peak of the sum of VmRSS of all of them (shared pages such as libcrypto\'s count '
             'once per process, so the sum overstates what the relay uses); **relay CPU** the CPU seconds of '
             'those processes (what a real relay would spend); **CPU busy** is how busy the '
             'machine\'s cores were during the run (every namespace shares them: controller, relay, hosts, '
             'their sshds) and the CPU seconds spent. '
             '**check**: every host\'s tree equal to the source (SHA-256), else what was wrong. '
             'ferrogen\'s binary is in every host\'s cache before the first timed run (one untimed push). '
             'Load average (1 min) before each run in the JSON.' % (
                 meta['command_line'], meta['date'], meta['ferrogen_version'], meta['rtt_ms'],
                 meta['rate_mbit'], a.large_mib, a.small))
    L.append('')
    L.append('Testbed: `bench/fleet-up N --rtt MS --rate MBIT` (controller ↔ delay-line uplink ↔ relay ↔ '
             'bridge ↔ N hosts, each in its own network and mount namespace), `bench/fleet-down`; '
             '`bench/run-fleet` does up, measure, down in one command.')
    L.append('')
    L.append('The flat contenders (clush, pdcp, Ansible) are routed through the relay by the kernel: '
             'no process of theirs runs there (relay RSS 0). Machine: %d cores shared with builds; '
             'load average %s during the run.' % (meta['cpus'], meta['load_range']))
    L.append('')
    for kind in ('large', 'small'):
        rows = [r for r in results if r['kind'] == kind]
        if not rows:
            continue
        L.append('%s:' % ('%d MiB file' % a.large_mib if kind == 'large' else '%d × 1 KiB files' % a.small))
        L.append('')
        L.append('| hosts | contender | wall s | uplink ↓ MiB | ↓ × payload | ↑ MiB | relay RSS max MiB | relay RSS sum MiB | relay CPU s | CPU busy % (CPU s) | check |')
        L.append('|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|')
        for r in sorted(rows, key=lambda r: (r['hosts'], [c for c, _ in CONTENDERS].index(r['contender']))):
            chk = 'ok' if r['ok'] else ('; '.join(r['bad_hosts'][:2]) or 'exit %s' % r['rc'])
            if r['ok'] is False and not r['bad_hosts']:
                chk = 'exit %s' % r['rc']
            if r.get('timeout'):
                chk = 'cut at %d s; ' % r['cut_s'] + chk
            relay_max = ('%.1f (%s)' % (r['relay_max_mib'], r['relay_max_comm'])) if r['relay_procs'] else '0'
            cpu = ('%.0f (%.1f)' % (r['cpu_busy_pct'], r['cpu_s'])) if 'cpu_s' in r else '?'
            L.append('| %d | %s | %s | %.1f | %.2f | %.1f | %s | %.1f | %s | %s | %s |' % (
                r['hosts'], LABEL[r['contender']], fmt_s(r), r['up_bytes'] / MiB,
                r['up_bytes'] / r['payload_bytes'], r['down_bytes'] / MiB, relay_max,
                r['relay_sum_mib'], r.get('relay_cpu_s', '?'), cpu, chk.replace('|', '/')))
        L.append('')
    if a.chart_name:
        L.append('![fleet benchmark](%s)' % a.chart_name)
        L.append('')
    return '\n'.join(L) + '\n'


def write_section(path, text):
    old = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
    lines = old.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == SECTION), None)
    if start is None:
        new = old.rstrip('\n') + '\n\n' + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')), len(lines))
        tail = ''.join(lines[end:])
        new = ''.join(lines[:start]) + text + ('\n' + tail if tail else '')
    with open(path + '.tmp', 'w') as f:
        f.write(new)
    os.rename(path + '.tmp', path)


def chart(a, results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    results = aggregate(results)
    kinds = [k for k in ('large', 'small') if any(r['kind'] == k for r in results)]
    fig, axes = plt.subplots(2, len(kinds), figsize=(6.5 * len(kinds), 8), squeeze=False)
    styles = {'ferrogen': ('tab:red', '*', '-'), 'ferrogen-notee': ('tab:orange', 'P', '--'),
              'clush': ('tab:green', 'o', '-'), 'clush-tree': ('tab:olive', 's', '--'),
              'pdcp': ('tab:brown', '^', '-'), 'ansible': ('tab:blue', 'D', '-'),
              'ansible-mitogen': ('tab:cyan', 'd', '--')}
    ns = sorted({r['hosts'] for r in results})
    for col, kind in enumerate(kinds):
        for c, label in CONTENDERS:
            rs = {r['hosts']: r for r in results if r['kind'] == kind and r['contender'] == c}
            if not rs:
                continue
            colr, mk, ls = styles[c]
            xs = [n for n in ns if n in rs]
            axes[0][col].plot(xs, [rs[n]['seconds'] for n in xs], color=colr, marker=mk, linestyle=ls,
                              label=label.replace('`', ''))
            axes[1][col].plot(xs, [rs[n]['up_bytes'] / rs[n]['payload_bytes'] for n in xs], color=colr,
                              marker=mk, linestyle=ls, label=label.replace('`', ''))
        title = '%d MiB file' % a.large_mib if kind == 'large' else '%d x 1 KiB files' % a.small
        axes[0][col].set_title('%s: wall time' % title)
        axes[0][col].set_ylabel('seconds (timed-out runs: the cut)')
        axes[1][col].set_title('%s: uplink bytes / payload' % title)
        axes[1][col].set_ylabel('x payload')
        for row in (0, 1):
            ax = axes[row][col]
            ax.set_xscale('log', base=2)
            ax.set_yscale('log')
            ax.set_xticks(ns)
            ax.set_xticklabels([str(n) for n in ns])
            ax.yaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: '%g' % v))
            ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
            ax.set_xlabel('hosts behind the relay')
            ax.grid(True, which='both', alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.suptitle('Fleet behind a relay: %g ms RTT, %g Mbit/s uplink' % (a.rtt_ms, a.rate_mbit))
    fig.tight_layout()
    fig.savefig(path, dpi=90)


# ------------------------------------------------------------------ main

def report_only(a):
    meta, results = None, []
    for path in a.from_json.split(','):
        d = json.load(open(path))
        if meta is None:
            meta = dict(d['meta'])
        else:
            meta['command_line'] += '` and `' + d['meta']['command_line']
            lo = [float(x) for x in (meta['load_range'].split(' to ') + d['meta']['load_range'].split(' to '))]
            meta['load_range'] = '%.1f to %.1f' % (min(lo), max(lo))
        results += d['results']
    meta.setdefault('large_mib', 64)
    meta.setdefault('small', 1000)
    a.large_mib, a.small = meta['large_mib'], meta['small']
    a.rtt_ms, a.rate_mbit = meta['rtt_ms'], meta['rate_mbit']
    finish(a, meta, results)


def finish(a, meta, results):
    a.chart_name = None
    if a.write:
        os.makedirs(a.out, exist_ok=True)
        try:
            a.chart_name = 'benchmarks-fleet.png'
            chart(a, results, os.path.join(a.out, a.chart_name))
        except ImportError:
            log('matplotlib missing: no chart')
            a.chart_name = None
    text = table(a, results, meta)
    print(text)
    if a.write:
        write_section(os.path.join(a.out, 'benchmarks.md'), text)
        with open(os.path.join(a.out, 'benchmarks-fleet.json'), 'w') as f:
            json.dump({'meta': meta, 'results': results}, f, indent=1)
        log('wrote %s/benchmarks.md, benchmarks-fleet.json%s' % (
            a.out, ', ' + a.chart_name if a.chart_name else ''))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--state', default=os.environ.get('FG_FLEET_STATE', '/run/ferrogen-fleet'))
    ap.add_argument('--ferrogen', help='the ferrogen binary to run (required unless --from-json)')
    ap.add_argument('--ferrogen-version', default='?')
    ap.add_argument('--venv-bin', default=os.path.dirname(sys.executable))
    ap.add_argument('--hosts', default='1,8,32', help='host counts, e.g. 1,8,32')
    ap.add_argument('--large-mib', type=int, default=64)
    ap.add_argument('--small', type=int, default=1000)
    ap.add_argument('--kinds', default='large,small')
    ap.add_argument('--repeat', type=int, default=1, help='runs of each row (the table shows the median and range)')
    ap.add_argument('--contenders', default='ferrogen,ferrogen-notee,clush,clush-tree,pdcp,ansible,ansible-mitogen')
    ap.add_argument('--timeout', type=int, default=600, help='seconds before a run is cut')
    ap.add_argument('--timeout-small', type=int, default=None,
                    help='cut for the small-files runs (default: --timeout)')
    ap.add_argument('--quick', action='store_true', help='8 MiB and 100 files (unless given), a smoke test')
    ap.add_argument('--write', action='store_true', help='write the section, chart and JSON into --out')
    ap.add_argument('--out', default=os.path.join(ROOT, 'docs'))
    ap.add_argument('--command-line', default='bench/fleet.py')
    ap.add_argument('--from-json', metavar='FILE',
                    help='measure nothing: print (and with --write, write) the report of earlier runs\' JSON '
                    '(FILE[,FILE...], merged)')
    a = ap.parse_args()
    if a.from_json:
        return report_only(a)
    if not a.ferrogen:
        ap.error('--ferrogen is required')
    if a.quick:
        if a.large_mib == 64:
            a.large_mib = 8
        if a.small == 1000:
            a.small = 100
    a.ferrogen = os.path.abspath(a.ferrogen)
    fl = Fleet(a.state)
    a.rtt_ms, a.rate_mbit = float(fl.env['FGF_RTT_MS']), float(fl.env['FGF_RATE_MBIT'])
    counts = [int(x) for x in a.hosts.split(',')]
    if max(counts) > len(fl.hosts):
        raise SystemExit('the fleet has %d hosts; asked for %d' % (len(fl.hosts), max(counts)))
    a.root_name = subprocess.run(['hostname'], stdout=subprocess.PIPE, text=True).stdout.strip()
    work = os.path.join(a.state, 'work')
    os.makedirs(work, exist_ok=True)

    contenders = a.contenders.split(',')
    helptext = subprocess.run([a.ferrogen, 'push', '--help'], stdout=subprocess.PIPE, text=True).stdout
    m = re.search(r'(--no-tee\b|--tee[-=a-z]*off\b|--no-[a-z-]*tee[a-z-]*)', helptext)
    a.no_tee_flag = m.group(1) if m else None
    if 'ferrogen-notee' in contenders and not a.no_tee_flag:
        log('this ferrogen has no tee switch in `push --help`: its tee is not there yet, '
            'so plain ferrogen is the "tee off" picture; ferrogen-notee skipped')
        contenders.remove('ferrogen-notee')
    a.mitogen_strategy = None
    if 'ansible-mitogen' in contenders:
        try:
            out = subprocess.run([os.path.join(a.venv_bin, 'python'), '-c',
                                  'import ansible_mitogen, os; print(os.path.dirname(ansible_mitogen.__file__))'],
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, check=True).stdout
            a.mitogen_strategy = os.path.join(out.strip(), 'plugins', 'strategy')
        except (subprocess.CalledProcessError, OSError):
            log('ansible_mitogen not importable in %s: ansible-mitogen skipped' % a.venv_bin)
            contenders.remove('ansible-mitogen')
    for tool, cs in (('clush', ('clush', 'clush-tree')), ('pdcp', ('pdcp',))):
        if not shutil.which(tool):
            log('%s not installed: %s skipped' % (tool, ', '.join(cs)))
            contenders = [c for c in contenders if c not in cs]
    a.contenders = contenders

    data = make_data(os.path.join(a.state, 'data'), a.large_mib, a.small)
    # ferrogen caches its binary in each host's $HOME: fill the caches once, untimed
    warm = os.path.join(a.state, 'data', 'warm')
    open(warm, 'w').write('warm\n')
    wargv = ['ip', 'netns', 'exec', fl.ns_ctl, a.ferrogen, 'push', warm, fl.dest + '/', '--via', 'relay',
             '-e', 'ssh -F %s' % fl.cfg] + [x for h in fl.hosts[:max(counts)] for x in ('-H', h)]
    subprocess.run(wargv, stdout=subprocess.DEVNULL, check=False)
    # its relay context may still be winding down: it must not count in the first run
    fl.leftovers(grace=10.0)

    results = []
    kinds = a.kinds.split(',')
    partial = os.path.join(work, 'results.json')

    def on_term(*_):
        raise KeyboardInterrupt
    signal.signal(signal.SIGTERM, on_term)
    try:
        for n, kind, c, _ in [(n, k, c, i) for n in counts for k in kinds for c in contenders
                              for i in range(a.repeat)]:
            hosts = fl.hosts[:n]
            log('%s, %s, %d host(s) ...' % (c, kind, n))
            r = one_run(a, fl, c, kind, data, hosts, work)
            results.append(r)
            log('  %s s, uplink %.1f MiB (%.2f x), cpu %s%% busy, relay max %.1f MiB (%s), sum %.1f MiB, %s%s' % (
                fmt_s(r), r['up_bytes'] / MiB, r['up_bytes'] / r['payload_bytes'], r['cpu_busy_pct'], r['relay_max_mib'],
                r['relay_max_comm'], r['relay_sum_mib'], 'ok' if r['ok'] else 'FAILED %s' % r['bad_hosts'][:3],
                ' (left: %s)' % r['leftovers'] if r['leftovers'] else ''))
            if not r['ok']:
                log('  exit %s; log tail:\n%s' % (r['rc'], r.get('log_tail', '')[-600:]))
            with open(partial, 'w') as f:
                json.dump(results, f, indent=1)
    except KeyboardInterrupt:
        log('interrupted: reporting the %d runs done' % len(results))
    fl.clear(fl.hosts)
    loads = [r['load1'] for r in results] or [0]

    meta = {'command_line': a.command_line, 'date': time.strftime('%Y-%m-%d'),
            'ferrogen_version': a.ferrogen_version, 'rtt_ms': a.rtt_ms, 'rate_mbit': a.rate_mbit,
            'cpus': os.cpu_count(), 'large_mib': a.large_mib, 'small': a.small, 'load_range': '%.1f to %.1f' % (min(loads), max(loads))}
    finish(a, meta, results)


if __name__ == '__main__':
    main()
