#!/usr/bin/env python3
"""Incremental push against rsync (issue 11, "Benchmarks"). Run through
bench/run-incremental, which builds ferrogen, mounts a tmpfs for the data,
brings up the namespaces, the delay line and the target's sshd, and removes
all of it afterwards; this file only measures and reports.

For every environment (local: both tools write to a local directory; link:
the client in netns fgb-ctl, the destination behind the emulated link in
fgb-host, reached over ssh; with --link testbed the shared testbed's tb-ctl /
tb-host instead) and every row, it runs ferrogen and rsync side by
side (alternating which goes first), --runs times each, times the whole
command, and checks after every run that the destination equals the source.

Rows whose ferrogen option this binary lacks (`ferrogen push --help` is
asked) are measured for rsync only and marked n/a for ferrogen.

`--merge RAW...` renders one table from the --raw files of several runs (e.g.
local + project link, then the testbed link): environments become columns; a
later file's (environment, row) replaces an earlier one's (a rerun row).
"""
import argparse
import hashlib
import json
import os
import platform
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

MiB = 1 << 20
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SECTION = '## Incremental push (issue 11)'
TOOLS = ('ferrogen', 'rsync')


def log(msg):
    print('[incremental %s] %s' % (time.strftime('%H:%M:%S'), msg), file=sys.stderr, flush=True)


def output(argv, **kw):
    return subprocess.run(argv, check=True, stdout=subprocess.PIPE, text=True, **kw).stdout.strip()


def tryout(argv):
    try:
        return output(argv, stderr=subprocess.STDOUT)
    except Exception:
        return '?'


# ------------------------------------------------------------------ processes

def kill_group(pgid):
    """SIGKILL what is left of a process group we started (its own session)."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def group_alive(pgid):
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def timed(argv, timeout):
    """Runs argv in its own session; returns (seconds, stdout+stderr). Raises
    RuntimeError on a non-zero exit or a timeout. Whatever the command left
    behind in its process group is killed afterwards, also on ^C."""
    t0 = time.perf_counter()
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    try:
        out, _ = p.communicate(timeout=timeout)
    except BaseException as e:
        kill_group(p.pid)
        p.communicate()
        if isinstance(e, subprocess.TimeoutExpired):
            raise RuntimeError('timed out after %d s' % timeout)
        raise
    dt = time.perf_counter() - t0
    kill_group(p.pid)
    if p.returncode != 0:
        raise RuntimeError('exit %d: %s' % (p.returncode, out.strip()[-600:]))
    return dt, out


# ------------------------------------------------------------------ data

def make_tree(root, n_files, n_dirs, size):
    """n_files files of `size` random bytes spread over n_dirs directories
    (d00..d99 for 100), made once and reused."""
    stamp = os.path.join(os.path.dirname(root), '.%s.done' % os.path.basename(root))
    if os.path.exists(stamp):
        return
    if os.path.exists(root):
        shutil.rmtree(root)
    log('making %s: %d files of %d B in %d directories' % (root, n_files, size, n_dirs))
    per = n_files // n_dirs
    width = len(str(n_dirs - 1))
    for d in range(n_dirs):
        dp = os.path.join(root, 'd%0*d' % (width, d))
        os.makedirs(dp)
        for i in range(per):
            with open(os.path.join(dp, 'f%05d.dat' % i), 'wb') as f:
                f.write(os.urandom(size))
    open(stamp, 'w').close()


def tree_files(root):
    """Relative paths of the regular files under root, sorted (stable sample)."""
    out = []
    for dp, dns, fns in os.walk(root):
        dns.sort()
        rel = os.path.relpath(dp, root)
        for f in sorted(fns):
            out.append(f if rel == '.' else os.path.join(rel, f))
    return out


def listing(root):
    """rel path -> (type, size, mtime_ns, mode) for everything under root
    (no symlink followed)."""
    out = {}
    stack = ['']
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                r = os.path.join(rel, e.name) if rel else e.name
                st = e.stat(follow_symlinks=False)
                if e.is_dir(follow_symlinks=False):
                    out[r] = ('d', 0, 0, st.st_mode & 0o7777)
                    stack.append(r)
                elif e.is_symlink():
                    out[r] = ('l', 0, 0, os.readlink(os.path.join(root, r)))
                else:
                    out[r] = ('f', st.st_size, st.st_mtime_ns, st.st_mode & 0o7777)
    return out


def file_digest(path, limit=None):
    h = hashlib.blake2b()
    with open(path, 'rb') as f:
        left = limit
        while True:
            b = f.read(4 * MiB if left is None else min(4 * MiB, left))
            if not b:
                break
            h.update(b)
            if left is not None:
                left -= len(b)
    return h.hexdigest()


def check_tree(src, dst, sample):
    """The destination equals the source: same entries, types, sizes, file
    mtimes (to the nanosecond) and modes; content compared for `sample`
    (relative paths: the files changed this run plus every 97th file)."""
    a, b = listing(src), listing(dst)
    if a.keys() != b.keys():
        missing = sorted(a.keys() - b.keys())
        extra = sorted(b.keys() - a.keys())
        raise RuntimeError('%s: %d entries missing (%s), %d extra (%s)' % (
            dst, len(missing), ', '.join(missing[:3]), len(extra), ', '.join(extra[:3])))
    bad = [r for r in a if a[r] != b[r]]
    if bad:
        r = bad[0]
        raise RuntimeError('%s: %d entries differ from the source, e.g. %s: %r vs %r' % (
            dst, len(bad), r, a[r], b[r]))
    for r in sample:
        if file_digest(os.path.join(src, r)) != file_digest(os.path.join(dst, r)):
            raise RuntimeError('%s: content of %s differs from the source' % (dst, r))


def check_file(src, dst, src_digest):
    if not os.path.isfile(dst):
        raise RuntimeError('%s missing after the push' % dst)
    s, d = os.stat(src), os.stat(dst)
    if s.st_size != d.st_size:
        raise RuntimeError('%s has %d bytes, the source %d' % (dst, d.st_size, s.st_size))
    if s.st_mtime_ns != d.st_mtime_ns:
        raise RuntimeError('%s: mtime %d, the source %d' % (dst, d.st_mtime_ns, s.st_mtime_ns))
    if file_digest(dst) != src_digest:
        raise RuntimeError('%s: content differs from the source' % dst)
    extra = [n for n in os.listdir(os.path.dirname(dst)) if n != os.path.basename(dst)]
    if extra:
        raise RuntimeError('%s: left behind in the destination directory: %s' % (dst, ', '.join(extra[:3])))


def rm(path):
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def resync(src, dst):
    """Untimed repair of a destination after a failed run, so later rows
    start from a destination in sync."""
    subprocess.run(['rsync', '-a', '--delete', src + '/', dst + '/'], check=True)


# ------------------------------------------------------------------ environments and commands

# The two link emulators: netns of the client, ssh host alias, ssh config
# (None: the bench's own, in the state dir), and how the docs name them.
LINKS = {
    'project': ('link', 'fgb-ctl', 'fgb-link', None,
                'bench/netns-up (tools/delayline), netns `fgb-ctl` -> `fgb-host`, the bench\'s own sshd'),
    'testbed': ('tblink', 'tb-ctl', 'nshost', '/tmp/testbed-ssh/ssh_config.tb-host',
                '/work/shared/testbed/netns-up (tbdelay), netns `tb-ctl` -> `tb-host`, '
                'the testbed\'s sshd on 10.77.0.2:2222'),
}


class Env:
    def __init__(self, key, title, ns, host, ssh_config=None, emulator=''):
        self.key, self.title, self.ns, self.host = key, title, ns, host
        self.ssh_config, self.emulator = ssh_config, emulator
        self.ssh_true = None

    def as_dict(self):
        return dict(self.__dict__)

    @staticmethod
    def from_dict(d):
        e = Env(d['key'], d['title'], d['ns'], d['host'], d.get('ssh_config'), d.get('emulator', ''))
        e.ssh_true = d.get('ssh_true')
        return e

    def wrap(self, argv):
        return (['ip', 'netns', 'exec', self.ns] if self.ns else []) + list(argv)


def command(tool, env, a, src, dst, extra, is_dir):
    """argv for pushing src (a directory's contents when is_dir) to dst."""
    remote = env.host is not None
    if tool == 'ferrogen':
        argv = [a.ferrogen, 'push']
        if remote:
            argv += ['-H', env.host, '-e', 'ssh -F %s' % env.ssh_config]
        argv += list(extra)
        argv += ['-r', src + '/', dst + '/'] if is_dir else [src, dst]
    else:
        argv = ['rsync', '-a'] + list(extra)
        if remote:
            argv += ['-e', 'ssh -F %s' % env.ssh_config]
        d = ('%s:%s' % (env.host, dst)) if remote else dst
        argv += [src + '/', d + '/'] if is_dir else [src, d]
    return env.wrap(argv)


def fg_counts(out):
    """The per-status counts from ferrogen's text summary line."""
    counts = {}
    for n, what in re.findall(r'(\d+) (created|changed|unchanged|deleted|skipped|failed)\b', out):
        counts[what] = counts.get(what, 0) + int(n)
    return counts


# ------------------------------------------------------------------ rows

class Row:
    """One benchmark row. `kind`: 'tree' (a directory of small files) or
    'big' (one large file). `fg` / `rs`: extra options; `needs`: the
    ferrogen option the row depends on (n/a without it)."""

    def __init__(self, key, label, kind, tree=None, fg=(), rs=(), needs=None, first=False,
                 change=None, extra_at_dest=0, big=None, resume=False):
        self.key, self.label, self.kind, self.tree = key, label, kind, tree
        self.fg, self.rs, self.needs, self.first = list(fg), list(rs), needs, first
        self.change, self.extra_at_dest, self.big, self.resume = change, extra_at_dest, big, resume


def rows_for(a):
    rows = []
    trees = [('10k', 10000)] + ([] if a.quick else [('100k', 100000)])
    for t, n in trees:
        nn = '{:,}'.format(n)
        rows.append(Row('first-%s' % t, 'first push, %s files' % nn, 'tree', t, first=True))
        rows.append(Row('same-%s' % t, 're-push, %s files unchanged' % nn, 'tree', t))
        rows.append(Row('chg-%s' % t, 're-push, %s files, 1 %% changed' % nn, 'tree', t, change=0.01))
        if t == '10k':
            rows.append(Row('csum-%s' % t, '`-c` re-push, %s unchanged (rsync `-a -c`)' % nn, 'tree', t,
                            fg=['-c'], rs=['-c']))
            rows.append(Row('excl-%s' % t, "re-push, %s unchanged, `--exclude 'd0?/'` (10 %% excluded)" % nn,
                            'tree', t, fg=['--exclude', 'd0?/'], rs=['--exclude', 'd0?/'], needs='--exclude'))
            rows.append(Row('del-%s' % t, 're-push `--delete`, %s unchanged + 1 %% extra at DEST' % nn, 'tree', t,
                            fg=['--delete'], rs=['--delete'], needs='--delete', extra_at_dest=0.01))
    if not a.quick:
        g = '%d MiB' % a.big_mib if a.big_mib < 1024 else '%g GiB' % (a.big_mib / 1024.0)
        rows.append(Row('big-first', '%s, first push (full)' % g, 'big', big='full', first=True))
        rows.append(Row('big-inplace', '%s, 1 MiB changed in place (middle)' % g, 'big', big='inplace'))
        rows.append(Row('big-insert', '%s, 1 MiB inserted at the front' % g, 'big', big='insert'))
        rows.append(Row('big-append', '%s, 1 MiB appended' % g, 'big', big='append'))
        rows.append(Row('big-resume', '%s, resume after SIGKILL at 50 %% (`--partial`)' % g, 'big', big='full',
                        fg=['--partial'], rs=['--partial'], needs='--partial', first=True, resume=True))
    if a.only:
        want = set(a.only.split(','))
        rows = [r for r in rows if r.key in want]
    return rows


class Bench:
    def __init__(self, a):
        self.a = a
        self.data = a.data
        self.results = []   # dicts: env, row, tool, run, seconds | error, notes
        self.dirty = set()  # (tool, tree) destinations to repair before the next re-push
        self.mut_rng = random.Random(11)
        help_text = tryout([a.ferrogen, 'push', '--help'])
        self.fg_has = {opt: (opt in help_text) for opt in ('--exclude', '--delete', '--partial', '--whole-file')}
        self.big_digests = {}

    # -------------------------------------------------------------- paths
    def src_tree(self, t):
        return os.path.join(self.data, 'src', t)

    def dst_tree(self, tool, t):
        return os.path.join(self.data, 'dst', '%s-%s' % (tool, t))

    def big_dir(self, tool):
        return os.path.join(self.data, 'dst', '%s-big' % tool)

    # -------------------------------------------------------------- data
    def prepare_data(self, rows):
        a = self.a
        for t, n in (('10k', 10000), ('100k', 100000)):
            if any(r.tree == t for r in rows):
                make_tree(self.src_tree(t), n, 100, 200)
        self.files = {t: tree_files(self.src_tree(t)) for t in ('10k', '100k') if any(r.tree == t for r in rows)}
        if any(r.kind == 'big' for r in rows):
            base = os.path.join(self.data, 'src', 'base.bin')
            if not os.path.exists(base) or os.path.getsize(base) != a.big_mib * MiB:
                log('writing %d MiB of random data' % a.big_mib)
                with open(base + '.tmp', 'wb') as w:
                    for _ in range(a.big_mib):
                        w.write(os.urandom(MiB))
                os.rename(base + '.tmp', base)
                t = time.time() - 86400
                os.utime(base, (t, t))
            self.base = base

    def mutate(self, t, frac, run):
        """Rewrites frac of the tree's files (a different set every run): half
        with a new size, half with new content of the same size (so only the
        mtime tells the quick check). Returns the changed paths."""
        # rsync's quick check compares whole seconds: a file rewritten with the
        # same size within the second of its previous change looks unchanged
        # to it (ferrogen compares nanoseconds). Real edits rarely land in the
        # same second as the last sync; keep the runs (0.1 s each locally)
        # apart so the row measures the tools, not that corner.
        wait = getattr(self, 'last_mutate', 0) + 1.05 - time.time()
        if wait > 0:
            time.sleep(wait)
        self.last_mutate = time.time()
        files = self.files[t]
        k = max(1, int(len(files) * frac))
        chosen = self.mut_rng.sample(files, k)
        src = self.src_tree(t)
        for i, r in enumerate(chosen):
            p = os.path.join(src, r)
            size = os.path.getsize(p)
            with open(p, 'wb') as f:
                f.write(os.urandom(size + 1 if i % 2 == 0 else size))
        return chosen

    def big_source(self, variant):
        """The source of a big row: the base file itself, or a changed copy."""
        if variant == 'full':
            return self.base
        src = os.path.join(self.data, 'src', 'big-%s.bin' % variant)
        rm(src)
        new = os.urandom(MiB)
        if variant == 'inplace':
            shutil.copyfile(self.base, src)
            with open(src, 'r+b') as f:
                f.seek((self.a.big_mib // 2) * MiB)
                f.write(new)
        elif variant == 'insert':
            with open(src, 'wb') as w, open(self.base, 'rb') as r:
                w.write(new)
                shutil.copyfileobj(r, w, 16 * MiB)
        elif variant == 'append':
            shutil.copyfile(self.base, src)
            with open(src, 'ab') as f:
                f.write(new)
        return src

    # -------------------------------------------------------------- one run of one tool
    def run_tree(self, env, row, tool, run, changed):
        a = self.a
        src, dst = self.src_tree(row.tree), self.dst_tree(tool, row.tree)
        if row.first:
            rm(dst)
        elif (tool, row.tree) in self.dirty or not os.path.isdir(dst):
            log('  repairing %s before the run (untimed)' % dst)
            resync(src, dst)
        self.dirty.discard((tool, row.tree))
        extra_paths = []
        if row.extra_at_dest:
            files = self.files[row.tree]
            for i, r in enumerate(random.Random(run).sample(files, int(len(files) * row.extra_at_dest))):
                p = os.path.join(dst, r + '.extra')
                with open(p, 'wb') as f:
                    f.write(b'x' * 100)
                extra_paths.append(p)
        extra = row.fg if tool == 'ferrogen' else row.rs
        argv = command(tool, env, a, src, dst, extra, True)
        try:
            dt, out = timed(argv, timeout=600 + (3000 if row.tree == '100k' else 0))
            sample = set(changed) | set(self.files[row.tree][::97])
            check_tree(src, dst, sorted(sample))
        except Exception:
            self.dirty.add((tool, row.tree))
            raise
        return dt, out, {}

    def run_big(self, env, row, tool, run, src):
        a = self.a
        d = self.big_dir(tool)
        dst = os.path.join(d, 'big.bin')
        rm(d)
        os.makedirs(d)
        if not row.first:
            shutil.copy2(self.base, dst)  # the previous version, as a previous push left it
        extra = row.fg if tool == 'ferrogen' else row.rs
        argv = command(tool, env, a, src, dst, extra, False)
        timeout = 300 + a.big_mib * (3 if env.host else 1)
        notes = {}
        if row.resume:
            notes = self.interrupt(argv, src, d, timeout)
        dt, out = timed(argv, timeout=timeout)
        check_file(src, dst, self.big_digests[src])
        return dt, out, notes

    def interrupt(self, argv, src, d, timeout):
        """Starts argv, SIGKILLs the controller (the command's own process,
        nothing else) once any file in the destination directory holds half
        the source's bytes, and waits until what is left there settles."""
        half = os.path.getsize(src) // 2
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            seen = 0
            while True:
                if p.poll() is not None:
                    raise RuntimeError('the push to be interrupted ended (exit %d) before half the bytes arrived'
                                       % p.returncode)
                seen = biggest(d)
                if seen >= half:
                    break
                if time.perf_counter() - t0 > timeout:
                    raise RuntimeError('half the bytes did not arrive within %d s' % timeout)
                time.sleep(0.005)
            os.kill(p.pid, signal.SIGKILL)
            killed_after = time.perf_counter() - t0
            p.wait()
            # The controller's children (ssh, a local target) see EOF and end on
            # their own; give them the time a user would, then clear what is left.
            t1 = time.perf_counter()
            while group_alive(p.pid) and time.perf_counter() - t1 < 20:
                time.sleep(0.05)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            kill_group(p.pid)
        # a remote target notices the closed connection a little later
        last, stable_since = None, time.perf_counter()
        while time.perf_counter() - stable_since < 1.0 and time.perf_counter() - t1 < 30:
            now = sorted((e.name, e.stat(follow_symlinks=False).st_size) for e in os.scandir(d))
            if now != last:
                last, stable_since = now, time.perf_counter()
            time.sleep(0.1)
        kept = max([s for _, s in last] or [0])
        return {'killed_at_bytes': seen, 'killed_after_s': killed_after, 'kept_bytes': kept,
                'left': [n for n, _ in last]}

    # -------------------------------------------------------------- rows
    def measure_row(self, env, row):
        a = self.a
        have = {'ferrogen': row.needs is None or self.fg_has.get(row.needs, False), 'rsync': True}
        for run in range(a.runs):
            changed = []
            src = None
            if row.kind == 'tree' and row.change:
                changed = self.mutate(row.tree, row.change, run)
            if row.kind == 'big':
                src = self.big_source(row.big)
                if src not in self.big_digests:
                    self.big_digests[src] = file_digest(src)
            order = TOOLS if run % 2 == 0 else TOOLS[::-1]
            for tool in order:
                rec = {'env': env.key, 'row': row.key, 'tool': tool, 'run': run}
                if not have[tool]:
                    rec['na'] = 'no %s in this binary' % row.needs
                    self.results.append(rec)
                    continue
                try:
                    if row.kind == 'tree':
                        dt, out, notes = self.run_tree(env, row, tool, run, changed)
                    else:
                        dt, out, notes = self.run_big(env, row, tool, run, src)
                    rec['seconds'] = dt
                    rec.update(notes)
                    if tool == 'ferrogen':
                        rec['counts'] = fg_counts(out)
                    log('%-10s %-12s %-8s run %d: %8.3f s%s' % (
                        env.key, row.key, tool, run, dt,
                        ('  ' + json.dumps(rec['counts'])) if rec.get('counts') else ''))
                except KeyboardInterrupt:
                    raise
                except Exception as e:
                    rec['error'] = str(e)
                    log('%-10s %-12s %-8s run %d FAILED: %s' % (env.key, row.key, tool, run, e))
                self.results.append(rec)
            if row.kind == 'big' and src != self.base:
                rm(src)
                self.big_digests.pop(src, None)
        if row.kind == 'big':
            for tool in TOOLS:
                rm(self.big_dir(tool))

    def measure_env(self, env, rows):
        if env.host:
            # Fill the target's binary cache so no timed push includes sending ferrogen.
            subprocess.run(env.wrap([self.a.ferrogen, 'ping', '-H', env.host, '-e', 'ssh -F %s' % env.ssh_config,
                                     '-c', '1']), check=True, stdout=subprocess.DEVNULL)
            ts = []
            for _ in range(3):
                t0 = time.perf_counter()
                subprocess.run(env.wrap(['ssh', '-F', env.ssh_config, env.host, 'true']), check=True)
                ts.append(time.perf_counter() - t0)
            env.ssh_true = statistics.median(ts)
            log('%s: ssh true %.3f s' % (env.key, env.ssh_true))
        for row in rows:
            self.measure_row(env, row)


def biggest(d):
    """Bytes held by the fullest regular file in d (hidden ones included):
    the smaller of its size and its allocated blocks, so a preallocated temp
    file does not count as received."""
    m = 0
    try:
        with os.scandir(d) as it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                m = max(m, min(st.st_size, st.st_blocks * 512))
    except OSError:
        pass
    return m


# ------------------------------------------------------------------ report

def summary(results, env, row, tool):
    rs = [r for r in results if r['env'] == env and r['row'] == row and r['tool'] == tool]
    if not rs:
        return None
    if any('na' in r for r in rs):
        return {'na': rs[0]['na']}
    ok = [r for r in rs if 'seconds' in r]
    errs = [r['error'] for r in rs if 'error' in r]
    if not ok:
        return {'error': errs[0] if errs else '?'}
    ts = sorted(r['seconds'] for r in ok)
    med = statistics.median(ts)
    s = {'median': med, 'spread': (ts[-1] - ts[0]) / med if med else 0.0, 'n': len(ts), 'failed': len(errs),
         'runs': ok, 'errors': errs}
    return s


def fmt_cell(s):
    if s is None:
        return '–'
    if 'na' in s:
        return 'n/a'
    if 'error' in s:
        return 'failed'
    c = ('%.3f s (%.0f %%)' if s['median'] < 10 else '%.2f s (%.0f %%)') % (s['median'], 100 * s['spread'])
    if s['failed']:
        c += ' (%d failed)' % s['failed']
    return c


def fmt_ratio(f, r):
    if f and r and 'median' in f and 'median' in r and r['median'] > 0:
        return '%.2f×' % (f['median'] / r['median'])
    return '–'


def render(parts, envs, rows, results, fg_has, runs, big_mib):
    """The markdown section. parts: one dict per run of the bench that gave
    results (command_line, info, env keys), in order."""
    L = [SECTION, '']
    L.append('Written by `bench/run-incremental` / `bench/incremental.py --merge` (do not edit by hand; '
             'the next run with `--write` replaces this section). Commands, one run each:')
    L.append('')
    for p in parts:
        L.append('- `%s` (%s)' % (p['command_line'], ', '.join(p['envs'])))
    L.append('')
    L.append('Each cell: median wall time of %d run(s) of the whole command (connection included), with the '
             'spread in brackets ((max − min) / median); × = ferrogen / rsync (below 1: ferrogen faster). The tools alternate which goes '
             'first. After every run the destination is compared with the source: every entry\'s type, size, '
             'file mtime (ns) and mode, and the content of the changed files plus every 97th file (big file: '
             'its whole digest).' % runs)
    L.append('')
    links = [e for e in envs if e.host]
    L.append('Commands: **local** — `ferrogen push [OPTS] -r SRC/ DEST/` (its default `local` target) and '
             '`rsync -a [OPTS] SRC/ DEST/`; **link** — the client in the controller\'s netns, the '
             'destination behind the delay line in the target\'s netns: `ferrogen push -H HOST -e '
             '\'ssh -F CFG\' [OPTS] -r SRC/ DEST/` and `rsync -a [OPTS] -e \'ssh -F CFG\' SRC/ HOST:DEST/`'
             '%s. Big file rows push one file to a file path. The target namespaces share the file system '
             'with the controller (only the network is separate): source and destinations are on one tmpfs '
             'in every environment. ferrogen runs with its defaults (it fsyncs every file and directory it '
             'writes, rsync does not; on tmpfs an fsync costs a syscall).'
             % ''.join('; **%s**: %s, HOST `%s`' % (e.title, e.emulator, e.host) for e in links))
    L.append('')
    L.append('Trees: N files of 200 B of random data in 100 directories. "1 % changed": before each run, '
             'a fresh random 1 % of the files is rewritten, half with one byte more, half with new content '
             'of the same size (only the mtime differs). "1 % extra at DEST": before each run, that many '
             'files the source lacks are written into DEST.')
    if any(r.kind == 'big' for r in rows):
        L[-1] += (' Big file: %d MiB of random data; "in place" '
             'overwrites the MiB at the middle, "inserted" puts 1 MiB of new data before it, "appended" '
             'after it; DEST holds the old version (same mtime as a previous push leaves). Locally rsync '
             'uses `--whole-file` by default (its delta algorithm only runs over a connection), and so does '
             'ferrogen (`--no-whole-file` turns its delta on), so the local big-file rows send everything. '
             'Resume: the push (with `--partial`) is started, the '
             'controller (ferrogen; the client `rsync`) gets SIGKILL once the fullest file in the '
             'destination directory holds half the bytes, the leftovers are given time to end, then the '
             'same command is timed; the notes give its time as a fraction of the full push.' % big_mib)
    L.append('')
    missing = [o for o in ('--exclude', '--delete', '--partial', '--whole-file') if not fg_has.get(o)]
    if missing:
        L.append('This ferrogen lacks %s: rows needing %s are n/a for it.%s' % (
            ', '.join('`%s`' % o for o in missing), 'them' if len(missing) > 1 else 'it',
            ' Without `--whole-file` it has no delta transfer: its changed-big-file rows resend the whole '
            'file.' if '--whole-file' in missing else ''))
        L.append('')
    for p in parts:
        info = p['info']
        L.append('Machine (`%s`): %s, %s cores; %s; %s; %s; ferrogen %s; %s; load average (1 min) %s at the '
                 'start, %s at the end, %s while measuring (min / median / max of a sample every 15 s; the '
                 'machine is shared with builds and other benchmarks).%s' % (
                     p['command_line'], info['cpu'], info['nproc'], info['kernel'], info['rsync'], info['openssh'],
                     info['ferrogen'], info['date'], info['load'], info['load_end'], info.get('load_during', '?'),
                     ''.join(' `ssh true` over %s: %.3f s.' % (e.title, e.ssh_true)
                             for e in envs if e.ssh_true and e.title in p['envs'])))
        L.append('')
    head = '| row |'
    sep = '|---|'
    for e in envs:
        head += ' %s: ferrogen | rsync | × |' % e.title
        sep += '---:|---:|---:|'
    L.append(head)
    L.append(sep)
    notes = []
    for row in rows:
        line = '| %s |' % row.label
        for e in envs:
            f = summary(results, e.key, row.key, 'ferrogen')
            r = summary(results, e.key, row.key, 'rsync')
            line += ' %s | %s | %s |' % (fmt_cell(f), fmt_cell(r), fmt_ratio(f, r))
            for tool, s in (('ferrogen', f), ('rsync', r)):
                if s and 'errors' in s and s['errors']:
                    notes.append('%s, %s, %s: %s' % (row.label, e.title, tool,
                                                     s['errors'][0].replace('\n', ' ')[:300]))
                elif s and 'error' in s:
                    notes.append('%s, %s, %s failed: %s' % (row.label, e.title, tool,
                                                            s['error'].replace('\n', ' ')[:300]))
            if f and 'runs' in f and f['runs'][-1].get('counts'):
                c = f['runs'][-1]['counts']
                notes.append('%s, %s: ferrogen reported %s.' % (row.label, e.title, ', '.join(
                    '%d %s' % (v, k) for k, v in c.items() if v)))
            if row.resume:
                full = {t: summary(results, e.key, 'big-first', t) for t in TOOLS}
                for tool, s in (('ferrogen', f), ('rsync', r)):
                    if s and 'runs' in s:
                        x = s['runs'][-1]
                        fr = ''
                        if full[tool] and 'median' in full[tool]:
                            fr = '; resume = %.2f× its full push' % (s['median'] / full[tool]['median'])
                        notes.append('%s, %s, %s: killed after %.2f s at %.0f MiB at DEST, %.0f MiB kept%s.' % (
                            row.label, e.title, tool, x['killed_after_s'], x['killed_at_bytes'] / MiB,
                            x['kept_bytes'] / MiB, fr))
        L.append(line)
    L.append('')
    if notes:
        L.append('Notes:')
        L.append('')
        for n in notes:
            L.append('- ' + n.replace('|', '/'))
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


# ------------------------------------------------------------------ main

class LoadSampler(threading.Thread):
    """Samples the 1-minute load average every `every` seconds while the bench runs."""

    def __init__(self, every=15.0):
        super().__init__(daemon=True)
        self.every, self.samples, self.stop = every, [], threading.Event()

    def run(self):
        while True:
            self.samples.append(float(open('/proc/loadavg').read().split()[0]))
            if self.stop.wait(self.every):
                return

    def text(self):
        if not self.samples:
            return '?'
        return '%.2f / %.2f / %.2f' % (min(self.samples), statistics.median(self.samples), max(self.samples))


def merge(a):
    """One section from several --raw files (see the module doc)."""
    parts, envs, results, fg_has, saved = [], {}, [], {}, None
    for path in a.merge:
        with open(path) as f:
            raw = json.load(f)
        saved = raw['args']
        fg_has = raw['ferrogen_options']
        keys = {(r['env'], r['row']) for r in raw['results']}
        results = [r for r in results if (r['env'], r['row']) not in keys] + raw['results']
        for d in raw['envs']:
            envs[d['key']] = Env.from_dict(d)
        parts.append({'command_line': raw['command_line'], 'info': raw['info'],
                      'envs': [d['title'] for d in raw['envs']]})
    a.quick, a.big_mib, a.only = False, saved['big_mib'], ''
    present = {r['row'] for r in results}
    rows = [r for r in rows_for(a) if r.key in present]
    order = {'local': 0, 'link': 1, 'tblink': 2}
    envl = sorted(envs.values(), key=lambda e: order.get(e.key, 9))
    return render(parts, envl, rows, results, fg_has, saved['runs'], saved['big_mib'])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--state', help='the state dir made by bench/run-incremental')
    ap.add_argument('--ferrogen')
    ap.add_argument('--ferrogen-version', default='?')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--quick', action='store_true', help='skip the 100,000-file and the big-file rows')
    ap.add_argument('--envs', default='local,link', help='local, link or both')
    ap.add_argument('--link', default='project', choices=sorted(LINKS), help='the emulator of the link rows')
    ap.add_argument('--rtt', type=float, default=20, help='the link\'s RTT (set up by the driver)')
    ap.add_argument('--big-mib', type=int, default=1024)
    ap.add_argument('--only', default='', help='comma-separated row keys (e.g. same-10k,chg-10k)')
    ap.add_argument('--write', action='store_true', help='write the section into docs/benchmarks.md')
    ap.add_argument('--out', default=os.path.join(ROOT, 'docs', 'benchmarks.md'))
    ap.add_argument('--raw', default='', help='also write the raw results as JSON here')
    ap.add_argument('--merge', nargs='+', default=[], metavar='RAW', help='render one table from --raw files')
    ap.add_argument('--command-line', default='bench/run-incremental')
    a = ap.parse_args()
    if a.merge:
        text = merge(a)
        print(text)
        if a.write:
            write_section(a.out, text)
            log('wrote the section to %s' % a.out)
        return 0
    if not a.state or not a.ferrogen:
        ap.error('--state and --ferrogen are needed (or --merge)')
    a.data = os.path.join(a.state, 'data')
    os.makedirs(os.path.join(a.data, 'src'), exist_ok=True)
    os.makedirs(os.path.join(a.data, 'dst'), exist_ok=True)

    info = {
        'date': time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime()),
        'kernel': 'Linux ' + platform.release(),
        'cpu': tryout(['sh', '-c', "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"]).strip(),
        'nproc': os.cpu_count(),
        'openssh': tryout(['ssh', '-V']),
        'rsync': tryout(['sh', '-c', 'rsync --version | head -1']).replace('  ', ' '),
        'ferrogen': a.ferrogen_version,
        'load': open('/proc/loadavg').read().split()[0],
    }
    envs = []
    for k in a.envs.split(','):
        if k == 'local':
            envs.append(Env('local', 'local', None, None))
        elif k == 'link':
            key, ns, host, cfg, what = LINKS[a.link]
            title = 'link %g ms%s' % (a.rtt, ' (testbed)' if a.link == 'testbed' else '')
            envs.append(Env(key, title, ns, host, cfg or os.path.join(a.state, 'ssh', 'ssh_config'), what))
        elif k:
            raise SystemExit('unknown environment %r (local, link)' % k)
    b = Bench(a)
    rows = rows_for(a)
    log('ferrogen options: %s' % ', '.join('%s %s' % (k, 'yes' if v else 'no') for k, v in b.fg_has.items()))
    b.prepare_data(rows)
    sampler = LoadSampler()
    sampler.start()
    for env in envs:
        log('environment %s: %d rows × %d runs × 2 tools' % (env.title, len(rows), a.runs))
        b.measure_env(env, rows)
    sampler.stop.set()
    info['load_end'] = open('/proc/loadavg').read().split()[0]
    info['load_during'] = sampler.text()
    part = {'command_line': a.command_line, 'info': info, 'envs': [e.title for e in envs]}
    if a.raw:
        with open(a.raw, 'w') as f:
            json.dump({'info': info, 'command_line': a.command_line, 'envs': [e.as_dict() for e in envs],
                       'args': {'runs': a.runs, 'big_mib': a.big_mib, 'rtt': a.rtt, 'link': a.link},
                       'ferrogen_options': b.fg_has, 'results': b.results}, f, indent=1)
    text = render([part], envs, rows, b.results, b.fg_has, a.runs, a.big_mib)
    print(text)
    if a.write:
        write_section(a.out, text)
        log('wrote the section to %s' % a.out)
    return 1 if any('error' in r for r in b.results) else 0


if __name__ == '__main__':
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log('interrupted')
        sys.exit(130)
