#!/usr/bin/env python3
"""Time to full rate of one large push (issue 14): ferrogen binaries next to
N parallel raw `ssh` connections carrying equal slices. Run by bench/run-rate,
which sets up the link, the sshd and the data tmpfs."""
import argparse
import datetime
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import time

MIB = 1 << 20


def sh(argv, **kw):
    return subprocess.run(argv, check=True, **kw)


def load():
    with open('/proc/loadavg') as f:
        return ' '.join(f.read().split()[:3])


class Bench:
    def __init__(self, a):
        self.a = a
        self.data = os.path.join(a.state, 'data')
        self.fg = dict(x.split('=', 1) for x in a.ferrogen)

    def wrap(self, argv):
        return ['ip', 'netns', 'exec', self.a.ns] + argv

    def ssh(self, cmd):
        return self.wrap(['ssh', '-F', self.a.ssh_config, self.a.host, cmd])

    def make_source(self, mib):
        src = os.path.join(self.data, 'src-%d' % mib)
        if not os.path.exists(src):
            sh(['dd', 'if=/dev/urandom', 'of=' + src, 'bs=1M', 'count=%d' % mib, 'status=none'])
        return src

    def run_one(self, row, src, dst, size):
        """Seconds for one run of `row`; extra facts (stripe attach times)."""
        if os.path.exists(dst):
            os.unlink(dst)
        q = shlex.quote
        extra = {}
        t0 = time.time()
        if row.startswith('ferrogen:'):
            label = row.split(':', 1)[1]
            logf = os.path.join(self.a.state, 'fg.log')
            with open(logf, 'w') as lf:
                p = subprocess.run(self.wrap([self.fg[label], 'push', '-v', '-H', self.a.host,
                                              '-e', 'ssh -F %s' % self.a.ssh_config, '--json', src, dst]),
                                   stdout=subprocess.DEVNULL, stderr=lf)
            secs = time.time() - t0
            text = open(logf, errors='replace').read()
            if p.returncode != 0:
                raise RuntimeError('%s failed: %s' % (row, text[-2000:]))
            ts = re.compile(r'^(\S+Z)\s')
            for line in text.splitlines():
                m = ts.match(line)
                if not m:
                    continue
                at = datetime.datetime.fromisoformat(m.group(1).replace('Z', '+00:00')).timestamp() - t0
                if 'extra streams attached' in line:
                    n = re.search(r'(\d+) of (\d+) extra streams attached', line)
                    extra['stripes'] = int(n.group(1)) if n else None
                    extra['all_attached_s'] = round(at, 3)
                if 'connected' in line and 'connected_s' not in extra:
                    extra['connected_s'] = round(at, 3)
        elif row.startswith('ssh-cat×'):
            n = int(row.split('×')[1])
            slice_ = -(-size // n)
            procs = []
            for i in range(n):
                off = i * slice_
                if off >= size:
                    break
                ln = min(slice_, size - off)
                remote = 'dd of=%s bs=1M seek=%d oflag=seek_bytes conv=notrunc status=none' % (q(dst), off)
                cmd = 'dd if=%s bs=1M skip=%d count=%d iflag=skip_bytes,count_bytes status=none | %s' % (
                    q(src), off, ln, ' '.join(q(x) for x in self.ssh(remote)))
                procs.append(subprocess.Popen(['sh', '-c', cmd]))
            rcs = [p.wait() for p in procs]
            secs = time.time() - t0
            if any(rcs):
                raise RuntimeError('%s failed: %s' % (row, rcs))
        elif row == 'ssh-cat':
            cmd = 'cat %s | %s' % (q(src), ' '.join(q(x) for x in self.ssh('cat > %s' % q(dst))))
            sh(['sh', '-c', cmd])
            secs = time.time() - t0
        else:
            raise ValueError(row)
        got = os.path.getsize(dst) if os.path.exists(dst) else -1
        if got != size:
            raise RuntimeError('%s: destination has %d bytes, not %d' % (row, got, size))
        os.unlink(dst)
        return secs, extra

    def main(self):
        a = self.a
        sizes = [int(s) for s in a.sizes.split(',')]
        par = [int(n) for n in a.parallel.split(',') if n]
        rows = ['ferrogen:%s' % l for l in self.fg] + ['ssh-cat×%d' % n for n in par]
        if a.single:
            rows.append('ssh-cat')
        # Fill each binary's cache on the target: no timed run sends ferrogen itself.
        for label, b in self.fg.items():
            sh(self.wrap([b, 'ping', '-H', a.host, '-e', 'ssh -F %s' % a.ssh_config]),
               stdout=subprocess.DEVNULL)
        results = {}
        load_start = load()
        for mib in sizes:
            src = self.make_source(mib)
            dst = os.path.join(self.data, 'dst-%d' % mib)
            for r in range(a.runs):
                order = rows[r % len(rows):] + rows[:r % len(rows)]
                for row in order:
                    secs, extra = self.run_one(row, src, dst, mib * MIB)
                    results.setdefault('%d' % mib, {}).setdefault(row, []).append(dict(secs=secs, **extra))
                    print('[rate] %d MiB run %d %-22s %6.2f s %s  load %s' % (
                        mib, r + 1, row, secs, json.dumps(extra) if extra else '', load()), file=sys.stderr)
        load_end = load()
        md = self.render(sizes, rows, par, results, load_start, load_end)
        print(md)
        if a.out:
            with open(a.out, 'w') as f:
                f.write(md)
            with open(a.out + '.json', 'w') as f:
                json.dump(dict(results=results, load_start=load_start, load_end=load_end,
                               command=a.command_line, link=a.link, rtt=a.rtt), f, indent=1)

    def render(self, sizes, rows, par, results, l0, l1):
        a = self.a
        def fmt(xs):
            return '%.2f s (%.2f–%.2f)' % (statistics.median(xs), min(xs), max(xs))
        L = []
        emu = ('project delay line (`bench/netns-up`, tools/delayline)' if a.link == 'project'
               else 'shared testbed delay line (`../shared/testbed/netns-up`, tbdelay)')
        L.append('%g ms RTT on the %s; %d runs per row, rounds rotate the order; median (min–max), '
                 'connect included. Load average at start %s, at end %s. Command: `%s`.' % (
                     a.rtt, emu, a.runs, l0, l1, a.command_line))
        L.append('')
        head = '| size | row | time | stripes at (s) |' + ''.join(' × ssh-cat×%d |' % n for n in par)
        L.append(head)
        L.append('|' + '---|' * (4 + len(par)))
        for mib in sizes:
            res = results.get('%d' % mib, {})
            for row in rows:
                xs = [x['secs'] for x in res.get(row, [])]
                if not xs:
                    continue
                at = [x['all_attached_s'] for x in res.get(row, []) if 'all_attached_s' in x]
                st = [x.get('stripes') for x in res.get(row, []) if 'stripes' in x]
                att = ('%.2f (%s stripes)' % (statistics.median(at), st[0])) if at else ''
                cells = ''
                for n in par:
                    ys = [x['secs'] for x in res.get('ssh-cat×%d' % n, [])]
                    cells += ' %.2f |' % (statistics.median(xs) / statistics.median(ys)) if ys else ' |'
                name = row.replace('ferrogen:', 'ferrogen ')
                L.append('| %s MiB | %s | %s | %s |%s' % (mib, name, fmt(xs), att, cells))
        return '\n'.join(L) + '\n'


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--state', required=True)
    ap.add_argument('--ns', required=True)
    ap.add_argument('--ssh-config', required=True)
    ap.add_argument('--host', required=True)
    ap.add_argument('--link', default='project')
    ap.add_argument('--rtt', type=float, default=100)
    ap.add_argument('--command-line', default='bench/run-rate')
    ap.add_argument('--ferrogen', action='append', default=[])
    ap.add_argument('--sizes', default='128,1024')
    ap.add_argument('--runs', type=int, default=3)
    ap.add_argument('--parallel', default='4,8')
    ap.add_argument('--single', action='store_true')
    ap.add_argument('--out')
    Bench(ap.parse_args()).main()


if __name__ == '__main__':
    main()
