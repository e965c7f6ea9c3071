#!/usr/bin/env python3
"""The benchmark against the field (issue 5). Run through bench/run-suite,
which builds the tools, sets up the namespaces, the sshd and the virtualenv,
and tears everything down afterwards; this file only measures and reports.

For every environment (loopback, then the emulated link at each RTT), in one
run, it pushes one large file and a directory of small files with each
contender, checks what arrived, and records wall time (the whole command:
connection, authentication, bootstrap and transfer) and, for ferrogen and
Mitogen, the peak RSS (VmHWM) of every process of theirs on both sides.

The pull kinds (issue 12) copy the same data from the target to here, with
ferrogen's push of it measured in the same round for comparison; they have
their own section in benchmarks.md, written only when they ran.
"""
import argparse
import hashlib
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

MiB = 1048576.0
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = '## Against the field (issue 5)'

CONTENDERS = [
    # key, label
    ('ssh-cat', 'raw `cat | ssh cat`'),
    ('scp', '`scp`'),
    ('sftp', '`sftp -b`'),
    ('rsync', '`rsync -e ssh`'),
    ('mitogen', 'Mitogen FileService'),
    ('mitogen-z', 'Mitogen FileService, ssh compression'),
    ('ferrogen-1m', 'ferrogen `--window 1M`'),
    ('ferrogen', 'ferrogen (default options)'),
]
DEFAULT_CONTENDERS = 'ssh-cat,scp,sftp,rsync,mitogen,ferrogen-1m,ferrogen'
LABEL = dict(CONTENDERS)

# The pull rows (issue 12): the same data, copied from the target to here.
# 'ferrogen-push' is the same transfer pushed, measured in the same round so
# the two directions see the same machine load.
PULL_SECTION = '## Pulling (issue 12)'
PULL_CONTENDERS = [
    ('ssh-cat', 'raw `ssh host cat >`'),
    ('scp', '`scp host:…`'),
    ('sftp', '`sftp -b` (`get`)'),
    ('rsync', '`rsync -e ssh host:…`'),
    ('ferrogen-1m', 'ferrogen pull `--window 1M`'),
    ('ferrogen', 'ferrogen pull (default options)'),
    ('ferrogen-push', 'ferrogen push, same data (default options)'),
]
DEFAULT_PULL_CONTENDERS = 'ssh-cat,scp,rsync,ferrogen-push,ferrogen'
PULL_LABEL = dict(PULL_CONTENDERS)
PUSH_KINDS = ('large', 'small')
PULL_KINDS = ('pull-large', 'pull-small')


def is_pull(kind):
    return kind.startswith('pull-')


def base_kind(kind):
    """'large' or 'small', whichever the direction."""
    return kind[len('pull-'):] if is_pull(kind) else kind


def log(msg):
    print('[suite %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def run(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def output(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout.strip()


# ------------------------------------------------------------------ processes and memory

def vm_hwm_kib(pid):
    try:
        with open('/proc/%d/status' % pid) as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


class RssPoller(threading.Thread):
    """Polls VmHWM of every process named in `comms` below the command's
    process (the controller side) and below the bench's sshd (the target
    side), every `interval` seconds. VmHWM is the process's own high-water
    mark, so polling only has to see each process once after its peak.

    Everything in those two trees is created after the poller starts (the
    sshd forks a new process per connection), so a scan reads /proc/PID/stat
    only for processes that did not exist at the start: cheap enough to run
    every 10 ms without disturbing what it measures."""

    def __init__(self, ctl_root, target_root, comms, interval=0.01):
        super().__init__(daemon=True)
        self.roots = {ctl_root: 'controller', target_root: 'target'}
        self.comms = set(comms)
        self.interval = interval
        self.peaks = {}  # pid -> [side, comm, kib]
        self.old = set(n for n in os.listdir('/proc') if n.isdigit()) - set(str(r) for r in self.roots)
        self.side = {}   # pid -> side, for processes known to be in a tree
        self.done = threading.Event()

    def sample(self):
        fresh = {}
        for name in os.listdir('/proc'):
            if not name.isdigit() or name in self.old:
                continue
            try:
                with open('/proc/%s/stat' % name, 'rb') as f:
                    st = f.read().decode('utf-8', 'replace')
            except OSError:
                continue
            lp, rp = st.find('('), st.rfind(')')
            fresh[int(name)] = (st[lp + 1:rp], int(st[rp + 2:].split()[1]))
        changed = True
        while changed:  # resolve sides down the trees, whatever the listing order
            changed = False
            for pid, (_, ppid) in fresh.items():
                if pid not in self.side:
                    side = self.roots.get(pid) or self.side.get(ppid)
                    if side:
                        self.side[pid] = side
                        changed = True
        for pid, (comm, ppid) in fresh.items():
            side = self.side.get(pid)
            if side is None:
                if ppid not in fresh:  # its parent is a stranger: so is it, for good
                    self.old.add(str(pid))
                continue
            if comm not in self.comms:
                continue
            kib = vm_hwm_kib(pid)
            if kib is None:
                continue
            cur = self.peaks.setdefault(pid, [side, comm, 0])
            cur[1] = comm
            cur[2] = max(cur[2], kib)

    def run(self):
        while not self.done.is_set():
            self.sample()
            self.done.wait(self.interval)

    def stop(self):
        self.done.set()
        self.join()

    def summary(self):
        s = {'controller_kib': 0, 'target_kib': 0, 'processes': []}
        for pid, (side, comm, kib) in sorted(self.peaks.items()):
            s['%s_kib' % side] = max(s['%s_kib' % side], kib)
            s['processes'].append({'pid': pid, 'side': side, 'comm': comm, 'vm_hwm_kib': kib})
        return s


def timed(argv, sshd_pid, comms=(), timeout=3600, env=None):
    """Runs argv; returns (seconds, stdout, rss summary or None). Raises on failure."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, env=env)
    poller = None
    if comms:
        poller = RssPoller(p.pid, sshd_pid, comms)
        poller.start()
    try:
        out, err = p.communicate(timeout=timeout)
    except BaseException as e:  # timeout, or ^C: the command's whole process group goes
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.communicate()
        if poller:
            poller.stop()
        if isinstance(e, subprocess.TimeoutExpired):
            raise RuntimeError('timed out after %d s' % timeout)
        raise
    dt = time.perf_counter() - t0
    if poller:
        poller.stop()
    if p.returncode != 0:
        raise RuntimeError('exit %d: %s' % (p.returncode, (err or out).strip()[-600:]))
    return dt, out, (poller.summary() if poller else None)


# ------------------------------------------------------------------ data

def make_data(data, size_mib, small_n, small_kib):
    src = os.path.join(data, 'src')
    os.makedirs(src, exist_ok=True)
    big = os.path.join(src, 'large.bin')
    if not os.path.exists(big) or os.path.getsize(big) != size_mib << 20:
        log('writing %d MiB of random data' % size_mib)
        with open('/dev/urandom', 'rb') as r, open(big + '.tmp', 'wb') as w:
            for _ in range(size_mib):
                w.write(r.read(1 << 20))
        os.rename(big + '.tmp', big)
    small = os.path.join(src, 'small')
    os.makedirs(small, exist_ok=True)
    have = len(os.listdir(small))
    if have != small_n:
        for f in os.listdir(small):
            os.unlink(os.path.join(small, f))
        for i in range(small_n):
            with open(os.path.join(small, 'f%05d.dat' % i), 'wb') as w:
                w.write(os.urandom(small_kib * 1024))
    return big, small


def sample_digest(path):
    size = os.path.getsize(path)
    h = hashlib.blake2b(str(size).encode())
    with open(path, 'rb') as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:
            f.seek(size // 2)
            h.update(f.read(1 << 20))
            f.seek(size - (1 << 20))
            h.update(f.read(1 << 20))
    return h.hexdigest()


def check_large(dst, src_digest, size):
    if not os.path.isfile(dst):
        raise RuntimeError('%s missing after transfer' % dst)
    if os.path.getsize(dst) != size:
        raise RuntimeError('%s has %d bytes, expected %d' % (dst, os.path.getsize(dst), size))
    if sample_digest(dst) != src_digest:
        raise RuntimeError('%s content differs from the source' % dst)


def check_small(dst, n, kib):
    if not os.path.isdir(dst):
        raise RuntimeError('%s missing after transfer' % dst)
    names = [f for f in os.listdir(dst) if not f.startswith('.')]
    bad = [f for f in names if os.path.getsize(os.path.join(dst, f)) != kib * 1024]
    if len(names) != n or bad:
        raise RuntimeError('%s: %d files (%d of wrong size), expected %d' % (dst, len(names), len(bad), n))


def clean(path):
    if os.path.isdir(path) and not os.path.islink(path):
        subprocess.run(['rm', '-rf', path], check=True)
    elif os.path.lexists(path):
        os.unlink(path)


# ------------------------------------------------------------------ environments

class Env:
    def __init__(self, name, ns, host, rtt):
        self.name, self.ns, self.host, self.rtt = name, ns, host, rtt
        self.measured_rtt_ms = None
        self.ssh_connect_s = None

    def wrap(self, argv):
        return ['ip', 'netns', 'exec', self.ns] + list(argv)


def tcp_connect_ms(ns, addr, port=22, n=9):
    code = ('import socket,time,statistics\nt=[]\nfor _ in range(%d):\n'
            '    s=socket.socket(); t0=time.perf_counter(); s.connect((%r,%d)); '
            't.append(time.perf_counter()-t0); s.close()\nprint(1000*statistics.median(t))' % (n, addr, port))
    return float(output(['ip', 'netns', 'exec', ns, sys.executable, '-c', code]))


# ------------------------------------------------------------------ contenders

def commands(c, env, a, kind, src, dst):
    """argv for contender c pushing src to dst (kind 'large' or 'small'),
    and the process names whose memory is tracked."""
    cfg = a.ssh_config
    ssh = ['ssh', '-F', cfg]
    h = env.host
    q = shlex.quote
    if c == 'ssh-cat':
        if kind == 'large':
            cmd = 'cat %s | ssh -F %s %s %s' % (q(src), q(cfg), h, q('cat > %s' % q(dst)))
        else:
            cmd = 'tar -C %s -cf - . | ssh -F %s %s %s' % (
                q(src), q(cfg), h, q('mkdir -p %s && tar -C %s -xf -' % (q(dst), q(dst))))
        return ['sh', '-c', cmd], ()
    if c == 'scp':
        return ['scp', '-q', '-F', cfg] + (['-r'] if kind == 'small' else []) + [src, '%s:%s' % (h, dst)], ()
    if c == 'sftp':
        batch = os.path.join(a.state, 'sftp.batch')
        with open(batch, 'w') as f:
            if kind == 'large':
                f.write('put %s %s\n' % (src, dst))
            else:
                f.write('mkdir %s\nput -r %s/ %s\n' % (dst, src, dst))
        return ['sftp', '-q', '-F', cfg, '-b', batch, h], ()
    if c == 'rsync':
        return ['rsync', '-e', ' '.join(ssh)] + (['-r', src + '/'] if kind == 'small' else [src]) + \
            ['%s:%s' % (h, dst)], ()
    if c in ('mitogen', 'mitogen-z'):
        argv = [a.venv_python, os.path.join(HERE, 'mitogen_push.py'), '--ssh-config', cfg, '--host', h]
        if c == 'mitogen-z':
            argv.append('--compression')
        if kind == 'small':
            argv.append('-r')
        return argv + [src, dst], ('python3', 'python')
    if c in ('ferrogen', 'ferrogen-1m'):
        argv = [a.ferrogen, 'push', '-H', h, '-e', 'ssh -F %s' % cfg, '--json']
        if c == 'ferrogen-1m':
            argv += ['--window', '1M']
        if kind == 'small':
            argv += ['-r', src + '/', dst + '/']
        else:
            argv += [src, dst]
        return argv, ('ferrogen',)
    raise ValueError(c)


def pull_commands(c, env, a, kind, src, dst):
    """argv for contender c copying src on the target to dst here (kind
    'large' or 'small'), and the process names whose memory is tracked.
    Target and controller share the tmpfs, so src names the same data a
    push reads."""
    cfg = a.ssh_config
    h = env.host
    q = shlex.quote
    if c == 'ferrogen-push':
        return commands('ferrogen', env, a, kind, src, dst)
    if c == 'ssh-cat':
        if kind == 'large':
            cmd = 'ssh -F %s %s %s > %s' % (q(cfg), h, q('cat %s' % q(src)), q(dst))
        else:
            cmd = 'mkdir -p %s && ssh -F %s %s %s | tar -C %s -xf -' % (
                q(dst), q(cfg), h, q('tar -C %s -cf - .' % q(src)), q(dst))
        return ['sh', '-c', cmd], ()
    if c == 'scp':
        return ['scp', '-q', '-F', cfg] + (['-r'] if kind == 'small' else []) + ['%s:%s' % (h, src), dst], ()
    if c == 'sftp':
        batch = os.path.join(a.state, 'sftp.batch')
        with open(batch, 'w') as f:
            f.write(('get %s %s\n' if kind == 'large' else 'get -r %s %s\n') % (src, dst))
        return ['sftp', '-q', '-F', cfg, '-b', batch, h], ()
    if c == 'rsync':
        ssh = 'ssh -F %s' % cfg
        if kind == 'small':
            return ['rsync', '-e', ssh, '-r', '%s:%s/' % (h, src), dst + '/'], ()
        return ['rsync', '-e', ssh, '%s:%s' % (h, src), dst], ()
    if c in ('ferrogen', 'ferrogen-1m'):
        argv = [a.ferrogen, 'pull', '-H', h, '-e', 'ssh -F %s' % cfg, '--json']
        if c == 'ferrogen-1m':
            argv += ['--window', '1M']
        if kind == 'small':
            argv += ['-r', src + '/', dst + '/']
        else:
            argv += [src, dst]
        return argv, ('ferrogen',)
    raise ValueError(c)


def measure_env(env, a, data, big, small, big_digest, results, latency):
    dst_root = os.path.join(data, 'dst')
    os.makedirs(dst_root, exist_ok=True)
    env.measured_rtt_ms = tcp_connect_ms(env.ns, '127.0.0.1' if env.rtt is None else a.addr_host)
    ts = []
    for _ in range(3):
        t0 = time.perf_counter()
        run(env.wrap(['ssh', '-F', a.ssh_config, env.host, 'true']))
        ts.append(time.perf_counter() - t0)
    env.ssh_connect_s = statistics.median(ts)
    log('%s: TCP connect %.2f ms, ssh true %.3f s' % (env.name, env.measured_rtt_ms, env.ssh_connect_s))
    if any(c.startswith('ferrogen') for c in a.contenders + a.pull_contenders):
        # Fill the target's binary cache so no timed push includes sending ferrogen.
        run(env.wrap([a.ferrogen, 'ping', '-H', env.host, '-e', 'ssh -F %s' % a.ssh_config, '-c', '1']),
            stdout=subprocess.DEVNULL)
    ceiling(env, a, results)
    for kind in a.kinds:
        pull = is_pull(kind)
        bk = base_kind(kind)
        slow = set()  # contenders whose first run took longer than --repeat-under
        for rep in range(a.runs):
            for c in (a.pull_contenders if pull else a.contenders):
                if c in slow:
                    continue
                src = big if bk == 'large' else small
                dst = os.path.join(dst_root, '%s%s.%s' % ('pull-' if pull else '', c,
                                                          'bin' if bk == 'large' else 'd'))
                clean(dst)
                argv, comms = (pull_commands if pull else commands)(c, env, a, bk, src, dst)
                size = a.size_mib << 20 if bk == 'large' else a.small * a.small_kib * 1024
                timeout = 120 + (a.size_mib if bk == 'large' else a.small * 0.5) * (1 + (env.rtt or 0) / 20.0)
                rec = {'env': env.name, 'rtt_ms': env.rtt, 'kind': kind, 'contender': c, 'run': rep,
                       'bytes': size}
                try:
                    dt, out, rss = timed(env.wrap(argv), a.sshd_pid, comms, timeout=timeout)
                    if bk == 'large':
                        check_large(dst, big_digest, size)
                    else:
                        # scp -r / ferrogen -r SRC/ DST/ may nest the directory
                        d = dst
                        if not os.path.exists(os.path.join(d, 'f00000.dat')) and \
                                os.path.isdir(os.path.join(d, 'small')):
                            d = os.path.join(d, 'small')
                        check_small(d, a.small, a.small_kib)
                    rec.update(seconds=dt, mib_s=size / MiB / dt)
                    if a.repeat_under and dt > a.repeat_under:
                        slow.add(c)
                    if rss:
                        rec['rss'] = rss
                    if c.startswith('mitogen'):
                        line = [l for l in out.splitlines() if l.startswith('{')]
                        if line:
                            rec['mitogen'] = json.loads(line[-1])
                    log('%s %s %-13s %7.2f s %8.1f MiB/s%s' % (
                        env.name, kind, c, dt, size / MiB / dt,
                        '  rss ctl %.1f MiB, target %.1f MiB' % (rss['controller_kib'] / 1024.0,
                                                                  rss['target_kib'] / 1024.0) if rss else ''))
                except Exception as e:  # record and go on with the next contender
                    rec['error'] = str(e)
                    log('%s %s %s FAILED: %s' % (env.name, kind, c, e))
                clean(dst)
                results.append(rec)
    if env.rtt is not None and env.rtt == a.latency_rtt and a.probe and 'large' in a.kinds:
        latency.extend(control_latency(env, a, big))


def ceiling(env, a, results):
    """Raw TCP through the environment: the link's own ceiling."""
    if not a.ceiling_seconds:
        return
    addr = '127.0.0.1' if env.rtt is None else a.addr_host
    for streams in (1, 4):
        srv = subprocess.Popen(['ip', 'netns', 'exec', 'fgb-host', a.tcpthru, 'server', '%s:5201' % addr,
                                '--count', str(streams)], stdout=subprocess.PIPE, text=True)
        try:
            srv.stdout.readline()  # "listening"
            out = output(env.wrap([a.tcpthru, 'client', '%s:5201' % addr, '--seconds',
                                   str(a.ceiling_seconds), '--streams', str(streams)]))
            r = json.loads(out)
            results.append({'env': env.name, 'rtt_ms': env.rtt, 'kind': 'tcp', 'contender': 'tcp-%d' % streams,
                            'run': 0, 'bytes': r['bytes'], 'seconds': r['seconds'], 'mib_s': r['mib_s']})
            log('%s raw TCP, %d stream(s): %.1f MiB/s' % (env.name, streams, r['mib_s']))
        except Exception as e:
            results.append({'env': env.name, 'rtt_ms': env.rtt, 'kind': 'tcp', 'contender': 'tcp-%d' % streams,
                            'run': 0, 'error': str(e)})
            log('%s raw TCP failed: %s' % (env.name, e))
        finally:
            try:
                srv.wait(timeout=a.ceiling_seconds + 30)
            except subprocess.TimeoutExpired:
                srv.kill()
                srv.wait()


def control_latency(env, a, big):
    """Control-call latency on a stream saturated by a large push (ferroprobe)."""
    out = []
    for mode, extra in (('ferrogen-1m', ['--window', '1M']), ('ferrogen', [])):
        if mode not in a.contenders:
            continue
        dst = os.path.join(a.data, 'dst', 'probe.bin')
        clean(dst)
        argv = env.wrap([a.probe, '-H', env.host, '-e', 'ssh -F %s' % a.ssh_config, '--remote-binary', a.ferrogen,
                         '--calls', str(a.latency_calls), '--interval-ms', '10'] + extra + [big, dst])
        try:
            dt, o, _ = timed(argv, a.sshd_pid, timeout=120 + a.size_mib * 2)
            r = json.loads([l for l in o.splitlines() if l.startswith('{')][-1])
            r.update(env=env.name, rtt_ms=env.rtt, contender=mode, measured_rtt_ms=env.measured_rtt_ms)
            out.append(r)
            log('%s control latency (%s): idle p50 %.2f ms; loaded p50 %.2f / p99 %.2f ms over %d calls' % (
                env.name, mode, r['idle']['p50_ms'], r['loaded']['p50_ms'], r['loaded']['p99_ms'],
                r['loaded']['count']))
        except Exception as e:
            out.append({'env': env.name, 'rtt_ms': env.rtt, 'contender': mode, 'error': str(e)})
            log('%s control latency (%s) FAILED: %s' % (env.name, mode, e))
        clean(dst)
    return out


# ------------------------------------------------------------------ report

def median_rec(results, env, kind, c):
    rs = [r for r in results if r['env'] == env and r['kind'] == kind and r['contender'] == c]
    ok = [r for r in rs if 'seconds' in r]
    if not ok:
        return (rs[0] if rs else None)
    ok.sort(key=lambda r: r['seconds'])
    return ok[len(ok) // 2]


def cell(text):
    return text.replace('|', '\\|')


def fmt_rss(r):
    rss = r.get('rss')
    if not rss:
        return ''
    n_t = sum(1 for p in rss['processes'] if p['side'] == 'target')
    return '%.1f / %.1f%s' % (rss['controller_kib'] / 1024.0, rss['target_kib'] / 1024.0,
                              ' (%d)' % n_t if n_t > 1 else '')


def env_title(env):
    return 'loopback' if env.rtt is None else 'link %g ms' % env.rtt


def render(a, info, envs, results, latency, chart_name, links):
    L = []
    L.append(SECTION)
    L.append('')
    L.append('Written by `bench/run-suite` (do not edit by hand; the next run replaces this section). '
             'Command: `%s`.' % a.command_line)
    L.append('')
    L.append('Large file: one %d MiB file of random data. Small files: %d files of %d KiB in one directory. '
             'Seconds are wall time of the whole command as a user runs it (ssh connection, authentication, '
             'bootstrap, transfer; one fresh connection per command), median of %d run(s); MiB/s = bytes / '
             'seconds; "× ssh cat" = that contender\'s time divided into raw `cat | ssh cat`\'s time in the same '
             'environment (for small files the raw baseline is `tar | ssh tar`). Peak RSS is VmHWM, MiB, '
             'polled every 10 ms over every process of the contender: controller side / target side (the '
             'largest process there, with the count of target processes when more than one). Source and '
             'destination are on tmpfs. Every result is checked on arrival (size and sampled content; file '
             'count and sizes).' % (a.size_mib, a.small, a.small_kib, a.runs))
    L.append('')
    L.append('Environments: **loopback** = client and sshd in one network namespace over `lo`; **link N ms** '
             '= client in netns `fgb-ctl`, sshd in netns `fgb-host`, joined by two TUN devices and '
             '`tools/delayline` holding each packet N/2 ms each way (rate %s, queue 128 MiB per direction). '
             'TCP settings are the kernel defaults: tcp_wmem `%s`, tcp_rmem `%s`, congestion control `%s`.'
             % ('unlimited' if not float(a.rate) else '%s Mbit/s' % a.rate, info['tcp_wmem'], info['tcp_rmem'],
                info['tcp_cc']))
    L.append('')
    L.append('Machine: %s, %s cores; %s; %s; ferrogen %s; Mitogen %s (Python %s); %s.' % (
        info['cpu'], info['nproc'], info['kernel'], info['openssh'], info['ferrogen'], info['mitogen'],
        info['python'], info['date']))
    L.append('')
    for kind, title in (('large', 'One large file (%d MiB)' % a.size_mib),
                        ('small', '%d small files (%d KiB each)' % (a.small, a.small_kib))):
        if kind not in a.kinds:
            continue
        L.append('### %s' % title)
        L.append('')
        L.append('| environment | contender | seconds | %s | × ssh cat | peak RSS MiB (ctl / target) |'
                 % ('MiB/s' if kind == 'large' else 'files/s'))
        L.append('|---|---|---:|---:|---:|---|')
        for env in envs:
            base = median_rec(results, env.name, kind, 'ssh-cat')
            for c in a.contenders:
                r = median_rec(results, env.name, kind, c)
                if r is None:
                    continue
                if 'seconds' not in r:
                    L.append('| %s | %s | failed: %s | | | |' % (
                        env_title(env), cell(LABEL[c]), r.get('error', '?').replace('|', '/').replace('\n', ' ')[:200]))
                    continue
                ratio = ''
                if base and 'seconds' in base:
                    ratio = '%.2f' % (base['seconds'] / r['seconds'])
                rate = ('%.1f' % r['mib_s']) if kind == 'large' else ('%.0f' % (a.small / r['seconds']))
                L.append('| %s | %s | %.2f | %s | %s | %s |' % (
                    env_title(env), cell(LABEL[c]), r['seconds'], rate, ratio, fmt_rss(r)))
        L.append('')
    L.append('![throughput against RTT](%s)' % chart_name)
    L.append('')
    # connection setup and raw TCP ceiling
    L.append('### The environments themselves')
    L.append('')
    L.append('TCP connect is the median time of a TCP handshake to the sshd (one RTT). `ssh true` is one '
             'fresh ssh connection (the fixed cost in every row above). Raw TCP is '
             '`tools/delayline/tcpthru` for %d s (1 and 4 connections): the ceiling of the path itself; at '
             '"link 0 ms" against "loopback" it is the delay line\'s own ceiling, which the contenders share '
             'the 2 cores with.' % a.ceiling_seconds)
    L.append('')
    L.append('Delay line counters over everything that crossed the link in that environment, data '
             'direction (client → target): packets dropped by its queue limit, most bytes held at once '
             '(≈ bytes in flight), and how late packets left against their due time (the delay line runs '
             'SCHED_FIFO, but shares the 2 cores with both ends).')
    L.append('')
    L.append('| environment | TCP connect ms | ssh true, s | raw TCP 1 conn, MiB/s | raw TCP 4 conns, MiB/s '
             '| delay line drops | max queued MiB | packets > 1 ms late | max late ms |')
    L.append('|---|---:|---:|---:|---:|---:|---:|---:|---:|')
    for env in envs:
        t1 = median_rec(results, env.name, 'tcp', 'tcp-1')
        t4 = median_rec(results, env.name, 'tcp', 'tcp-4')
        f = lambda r: ('%.1f' % r['mib_s']) if r and 'mib_s' in r else '–'
        dl = next((l['delayline']['directions']['a_to_b'] for l in links if l['env'] == env.name), None)
        dls = ('%d | %.1f | %d of %d | %.2f' % (dl['drops'], dl['max_queued_bytes'] / MiB,
                                                 dl.get('late_over_1ms', 0), dl['tx_pkts'],
                                                 dl['max_late_us'] / 1000.0)
               if dl else '– | – | – | –')
        L.append('| %s | %.2f | %.3f | %s | %s | %s |' % (env_title(env), env.measured_rtt_ms, env.ssh_connect_s,
                                                       f(t1), f(t4), dls))
    L.append('')
    if not a.probe and 'large' in a.kinds and a.latency_rtt in [e.rtt for e in envs]:
        L.append('### Control calls during a saturating transfer')
        L.append('')
        L.append('Not measured in this run: `tools/ferroprobe` did not build against this ferrogen '
                 '(see the run\'s log).')
        L.append('')
    if latency:
        L.append('### Control calls during a saturating transfer')
        L.append('')
        L.append('`tools/ferroprobe` connects one target over ssh, pushes the large file, and meanwhile calls '
                 'the target\'s `ferrogen.ping` service on the same stream every 10 ms; "idle" is the same '
                 'call before the push starts. Like `ferrogen push`, it stripes a large push over a path of '
                 '4 ms or more ("streams" = primary + data stripes attached; the calls use the primary). '
                 'Goal (issue 5, point 6): p50 and p99 within RTT + 2 ms.')
        L.append('')
        L.append('| environment | ferrogen | streams | idle p50 ms | loaded p50 ms | loaded p99 ms | loaded max ms '
                 '| calls | push MiB/s | goal (RTT + 2 ms) |')
        L.append('|---|---|---:|---:|---:|---:|---:|---:|---:|---|')
        for r in latency:
            if 'error' in r:
                L.append('| link %g ms | %s | | failed: %s | | | | | | |' % (
                    r['rtt_ms'], cell(LABEL[r['contender']]), r['error'].replace('|', '/')[:200]))
                continue
            goal = r['measured_rtt_ms'] + 2.0
            met = r['loaded']['p50_ms'] <= goal and r['loaded']['p99_ms'] <= goal
            L.append('| link %g ms | %s | %s | %.2f | %.2f | %.2f | %.2f | %d | %.1f | %s (%.1f ms) |' % (
                r['rtt_ms'], cell(LABEL[r['contender']]), r.get('streams', '?'), r['idle']['p50_ms'],
                r['loaded']['p50_ms'],
                r['loaded']['p99_ms'], r['loaded']['max_ms'], r['loaded']['count'], r['push_mib_s'],
                'met' if met else 'not met', goal))
        L.append('')
    return '\n'.join(L) + '\n'


def spread(results, env, kind, c):
    """(min, max, n) seconds over the successful runs."""
    ok = [r['seconds'] for r in results
          if r['env'] == env and r['kind'] == kind and r['contender'] == c and 'seconds' in r]
    return (min(ok), max(ok), len(ok)) if ok else None


def render_pull(a, info, envs, results):
    L = [PULL_SECTION, '']
    L.append('Written by `bench/run-suite` (do not edit by hand; a run with pull kinds replaces this section, '
             'one without leaves it alone). Command: `%s`.' % a.command_line)
    L.append('')
    L.append('The same data as the push rows of "Against the field", copied the other way: the file or '
             'directory lies on the target (the bench sshd\'s side) and lands here. Contenders: raw '
             '`ssh host \'cat SRC\' > DST` (for small files `ssh host \'tar -cf - .\' | tar -xf -`), '
             '`scp [-r] host:SRC DST`, `rsync -e ssh [-r] host:SRC DST`, `ferrogen pull -H host [-r] SRC DST` '
             '(default options, and `--window 1M` when listed) and, measured in the same round right beside '
             'them, `ferrogen push` of the same data (the push row of the issue, so both directions see the '
             'same machine load). Seconds are wall time of the whole command (fresh ssh connection, '
             'bootstrap from the cached binary, transfer), median of %d run(s), with the fastest and slowest '
             'run and the number of runs n (%s); "× ssh cat" = raw ssh time / this time; "× push" = '
             'ferrogen push time / this time '
             '(≥ 1.00: at least as fast as the same push). Every result is checked on arrival (size and '
             'sampled content; file count and sizes). Peak RSS as above (controller = here, the receiving '
             'side when pulling).' % (a.runs, 'a contender whose first run took longer than %g s ran once'
                                      % a.repeat_under if a.repeat_under else 'every contender ran every time'))
    L.append('')
    L.append('Link and TCP settings as in "Against the field" (tcp_wmem `%s`, tcp_rmem `%s`, `%s`). Machine: '
             '%s, %s cores, shared with other build jobs (load average at the start: %s); %s; ferrogen %s; %s; '
             '%s.' % (info['tcp_wmem'], info['tcp_rmem'], info['tcp_cc'], info['cpu'], info['nproc'],
                      info.get('load', '?'), info['openssh'], info['ferrogen'], info['rsync'], info['date']))
    L.append('')
    for kind, title in (('pull-large', 'Pulling one large file (%d MiB)' % a.size_mib),
                        ('pull-small', 'Pulling %d small files (%d KiB each)' % (a.small, a.small_kib))):
        if kind not in a.kinds:
            continue
        large = kind == 'pull-large'
        L.append('### %s' % title)
        L.append('')
        L.append('| environment | contender | seconds | min – max (n) | %s | × ssh cat | × push '
                 '| peak RSS MiB (ctl / target) |' % ('MiB/s' if large else 'files/s'))
        L.append('|---|---|---:|---:|---:|---:|---:|---|')
        for env in envs:
            base = median_rec(results, env.name, kind, 'ssh-cat')
            push = median_rec(results, env.name, kind, 'ferrogen-push')
            for c in a.pull_contenders:
                r = median_rec(results, env.name, kind, c)
                if r is None:
                    continue
                if 'seconds' not in r:
                    L.append('| %s | %s | failed: %s | | | | | |' % (
                        env_title(env), cell(PULL_LABEL[c]),
                        r.get('error', '?').replace('|', '/').replace('\n', ' ')[:200]))
                    continue
                ratio = lambda b: ('%.2f' % (b['seconds'] / r['seconds'])) if b and 'seconds' in b else ''
                lo, hi, n = spread(results, env.name, kind, c)
                rate = ('%.1f' % r['mib_s']) if large else ('%.0f' % (a.small / r['seconds']))
                L.append('| %s | %s | %.2f | %.2f – %.2f (%d) | %s | %s | %s | %s |' % (
                    env_title(env), cell(PULL_LABEL[c]), r['seconds'], lo, hi, n, rate, ratio(base),
                    '' if c == 'ferrogen-push' else ratio(push), fmt_rss(r)))
        L.append('')
    L.append('| environment | TCP connect ms | `ssh true`, s |')
    L.append('|---|---:|---:|')
    for env in envs:
        L.append('| %s | %.2f | %.3f |' % (env_title(env), env.measured_rtt_ms, env.ssh_connect_s))
    L.append('')
    return '\n'.join(L) + '\n'


def write_section(path, text, section=SECTION):
    old = open(path).read() if os.path.exists(path) else '# Benchmarks\n'
    lines = old.splitlines(keepends=True)
    start = next((i for i, l in enumerate(lines) if l.rstrip() == section), None)
    if start is None:
        new = old.rstrip('\n') + '\n\n' + text
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith('## ')), len(lines))
        tail = ''.join(lines[end:])
        new = ''.join(lines[:start]) + text + ('\n' + tail if tail else '')
    with open(path + '.tmp', 'w') as f:
        f.write(new)
    os.rename(path + '.tmp', path)


def chart(a, envs, results, path):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    xs = list(range(len(envs)))
    names = ['loopback' if e.rtt is None else '%g ms' % e.rtt for e in envs]
    kinds = [k for k in ('large', 'small') if k in a.kinds]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    styles = {'ssh-cat': ('k', 'o', '-'), 'scp': ('tab:gray', 's', '--'), 'sftp': ('tab:olive', 'v', '--'),
              'rsync': ('tab:brown', '^', '--'), 'mitogen': ('tab:blue', 'D', '-'),
              'mitogen-z': ('tab:cyan', 'd', ':'), 'ferrogen-1m': ('tab:orange', 'P', '-'),
              'ferrogen': ('tab:red', '*', '-')}
    for ax, kind in zip(axes[0], kinds):
        for c in a.contenders:
            ys = []
            for e in envs:
                r = median_rec(results, e.name, kind, c)
                if kind == 'large':
                    ys.append(r['mib_s'] if r and 'mib_s' in r else float('nan'))
                else:
                    ys.append(a.small / r['seconds'] if r and 'seconds' in r else float('nan'))
            col, mk, ls = styles.get(c, ('k', '.', '-'))
            ax.plot(xs, ys, color=col, marker=mk, linestyle=ls, label=LABEL[c].replace('`', ''))
        if kind == 'large':
            ys = []
            for e in envs:
                r = median_rec(results, e.name, 'tcp', 'tcp-1')
                ys.append(r['mib_s'] if r and 'mib_s' in r else float('nan'))
            ax.plot(xs, ys, color='0.7', marker='', linestyle=':', label='raw TCP, 1 connection (no ssh)')
        ax.set_xticks(xs)
        ax.set_xticklabels(names)
        ax.set_xlabel('environment (emulated RTT)')
        ax.set_ylabel('MiB/s (wall, incl. connection)' if kind == 'large' else 'files/s (wall, incl. connection)')
        ax.set_yscale('log')
        ax.grid(True, which='both', alpha=0.3)
        ax.set_title('one %d MiB file' % a.size_mib if kind == 'large'
                     else '%d × %d KiB files' % (a.small, a.small_kib))
        ax.legend(fontsize=7)
    fig.suptitle('ferrogen against the field: push throughput against RTT (log scale)')
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ------------------------------------------------------------------ main

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--rtts', default='0,20,100')
    ap.add_argument('--rate', default='0', help='link rate limit in Mbit/s, 0 = unlimited')
    ap.add_argument('--no-loopback', action='store_true')
    ap.add_argument('--size-mib', type=int, default=1024)
    ap.add_argument('--small', type=int, default=1000)
    ap.add_argument('--small-kib', type=int, default=1)
    ap.add_argument('--runs', type=int, default=1)
    ap.add_argument('--repeat-under', type=float, default=0,
                    help='run a contender only once in an environment when its first run took longer '
                         'than this many seconds (0 = always --runs times); tables show each row\'s n')
    ap.add_argument('--kinds', default=None,
                    help='comma list of large,small (push) and pull-large,pull-small; '
                         'default: those of --direction')
    ap.add_argument('--direction', default='both', choices=('push', 'pull', 'both'),
                    help='which kinds to run when --kinds is not given')
    ap.add_argument('--contenders', default=DEFAULT_CONTENDERS)
    ap.add_argument('--pull-contenders', default=DEFAULT_PULL_CONTENDERS,
                    help='contenders of the pull kinds (%s)' % ','.join(PULL_LABEL))
    ap.add_argument('--latency-rtt', type=float, default=20)
    ap.add_argument('--latency-calls', type=int, default=2000)
    ap.add_argument('--ceiling-seconds', type=int, default=5)
    ap.add_argument('--out', default=os.path.join(ROOT, 'docs'))
    ap.add_argument('--state', required=True)
    ap.add_argument('--ferrogen', required=True)
    ap.add_argument('--ferrogen-version', default='?')
    ap.add_argument('--probe', default='')
    ap.add_argument('--tcpthru', required=True)
    ap.add_argument('--venv-python', required=True)
    ap.add_argument('--command-line', default='bench/run-suite')
    a = ap.parse_args()
    a.contenders = [c for c in a.contenders.split(',') if c]
    for c in a.contenders:
        if c not in LABEL:
            raise SystemExit('unknown contender %r (known: %s)' % (c, ', '.join(LABEL)))
    a.pull_contenders = [c for c in a.pull_contenders.split(',') if c]
    for c in a.pull_contenders:
        if c not in PULL_LABEL:
            raise SystemExit('unknown pull contender %r (known: %s)' % (c, ', '.join(PULL_LABEL)))
    if a.kinds is None:
        a.kinds = {'push': ','.join(PUSH_KINDS), 'pull': ','.join(PULL_KINDS),
                   'both': ','.join(PUSH_KINDS + PULL_KINDS)}[a.direction]
    a.kinds = [k for k in a.kinds.split(',') if k]
    for k in a.kinds:
        if k not in PUSH_KINDS + PULL_KINDS:
            raise SystemExit('unknown kind %r (known: %s)' % (k, ', '.join(PUSH_KINDS + PULL_KINDS)))
    a.push_run = any(k in PUSH_KINDS for k in a.kinds)
    a.pull_run = any(k in PULL_KINDS for k in a.kinds)
    a.ssh_config = os.path.join(a.state, 'ssh', 'ssh_config')
    a.sshd_pid = int(open(os.path.join(a.state, 'sshd.pid')).read())
    a.addr_host = '10.199.0.2'
    a.data = os.path.join(a.state, 'data')
    rtts = [float(x) for x in a.rtts.split(',') if x.strip() != '']

    big, small = make_data(a.data, a.size_mib, a.small, a.small_kib)
    big_digest = sample_digest(big)
    subprocess.run(['cat', big], stdout=subprocess.DEVNULL)

    def sysctl(ns, name):
        return output(['ip', 'netns', 'exec', ns, 'cat', '/proc/sys/net/ipv4/' + name]).replace('\t', ' ')

    def tryout(argv):
        try:
            return output(argv, stderr=subprocess.STDOUT)
        except Exception:
            return '?'

    info = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'kernel': 'Linux ' + platform.release(),
        'cpu': tryout(['sh', '-c', "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip(),
        'nproc': os.cpu_count(),
        'openssh': tryout(['ssh', '-V']),
        'rsync': tryout(['sh', '-c', 'rsync --version | head -1']),
        'python': platform.python_version(),
        'mitogen': tryout([a.venv_python, '-c', 'import mitogen; print(".".join(map(str, mitogen.__version__)))']),
        'ferrogen': a.ferrogen_version,
        'tcp_wmem': sysctl('fgb-ctl', 'tcp_wmem'),
        'tcp_rmem': sysctl('fgb-ctl', 'tcp_rmem'),
        'tcp_cc': sysctl('fgb-ctl', 'tcp_congestion_control'),
        'load': ' '.join(open('/proc/loadavg').read().split()[:3]),
    }
    envs = []
    if not a.no_loopback:
        envs.append(Env('loopback', 'fgb-host', 'fgb-lo', None))
    for r in rtts:
        envs.append(Env('link %g ms' % r, 'fgb-ctl', 'fgb-link', r))
    results, latency, links = [], [], []
    for env in envs:
        if env.rtt is not None:
            run([os.path.join(HERE, 'netns-up'), '--rtt', '%g' % env.rtt, '--rate', a.rate])
        measure_env(env, a, a.data, big, small, big_digest, results, latency)
        if env.rtt is not None:
            subprocess.run(['kill', '-USR1', open(os.path.join(a.state, 'delayline.pid')).read().strip()])
            time.sleep(0.3)
            try:
                links.append({'env': env.name, 'delayline': json.load(open(os.path.join(a.state,
                                                                                         'delayline.stats.json')))})
            except (OSError, ValueError):
                pass

    os.makedirs(a.out, exist_ok=True)
    raw = {'info': info, 'args': {k: v for k, v in vars(a).items() if k not in ('state',)},
           'environments': [{'name': e.name, 'rtt_ms': e.rtt, 'tcp_connect_ms': e.measured_rtt_ms,
                             'ssh_true_s': e.ssh_connect_s} for e in envs]}
    # Each direction writes only its own section, chart and raw results, so
    # a pull-only run leaves the push tables (and a push-only run the pull
    # tables) as they were.
    if a.push_run:
        chart_name = 'benchmarks-field.png'
        chart_ok = True
        try:
            chart(a, envs, results, os.path.join(a.out, chart_name))
        except Exception as e:
            chart_ok = False
            log('chart failed: %s' % e)
        text = render(a, info, envs, results, latency, chart_name if chart_ok else '(chart failed)', links)
        write_section(os.path.join(a.out, 'benchmarks.md'), text)
        with open(os.path.join(a.out, 'benchmarks-field.json'), 'w') as f:
            json.dump(dict(raw, results=[r for r in results if not is_pull(r['kind'])],
                           control_latency=latency, links=links), f, indent=1)
        print(text)
        log('wrote %s, %s and benchmarks-field.json in %s' % ('benchmarks.md', chart_name, a.out))
    if a.pull_run:
        text = render_pull(a, info, envs, results)
        write_section(os.path.join(a.out, 'benchmarks.md'), text, PULL_SECTION)
        with open(os.path.join(a.out, 'benchmarks-pull.json'), 'w') as f:
            json.dump(dict(raw, results=[r for r in results if is_pull(r['kind'])]), f, indent=1)
        print(text)
        log('wrote the section %r of benchmarks.md and benchmarks-pull.json in %s' % (PULL_SECTION, a.out))
    failed = [r for r in results if 'error' in r]
    return 1 if failed else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log('interrupted')
        sys.exit(130)
