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

    def ssh(self, cmd, cipher=None):
        pick = ['-c', cipher] if cipher else []
        return self.wrap(['ssh', '-F', self.a.ssh_config] + pick + [self.a.host, cmd])

    def make_source(self, mib):
        src = os.path.join(self.data, 'src-%d' % mib)
        if not os.path.exists(src):
            sh(['dd', 'if=/dev/urandom', 'of=' + src, 'bs=1M', 'count=%d' % mib, 'status=none'])
        return src

    def sample(self, stop, out):
        """Until `stop` is set: (seconds, bytes) written so far by the
        processes holding a destination file open (the receiver's temp file,
        the remote `dd`s), every 100 ms."""
        t0 = time.time()
        seen = {}
        while not stop.is_set():
            for pid in os.listdir('/proc'):
                if not pid.isdigit():
                    continue
                try:
                    fds = os.listdir('/proc/%s/fd' % pid)
                except OSError:
                    continue
                for fd in fds:
                    try:
                        l = os.readlink('/proc/%s/fd/%s' % (pid, fd))
                    except OSError:
                        continue
                    if l.startswith(self.data) and '/src-' not in l:
                        try:
                            for ln in open('/proc/%s/io' % pid):
                                if ln.startswith('wchar:'):
                                    seen[pid] = int(ln.split()[1])
                        except OSError:
                            pass
                        break
            out.append((time.time() - t0, sum(seen.values())))
            stop.wait(0.1)

    def run_one(self, row, src, dst, size, timeline=None):
        """Seconds for one run of `row`; extra facts (stripe attach times).
        With `timeline` (a list), also samples the bytes landed over time."""
        if os.path.exists(dst):
            os.unlink(dst)
        sampler = None
        if timeline is not None:
            import threading
            stop = threading.Event()
            sampler = threading.Thread(target=self.sample, args=(stop, timeline))
            sampler.start()
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
            # 'ssh-cat×N' or 'ssh-cat×N CIPHER'
            words = row.split(' ')
            n = int(words[0].split('×')[1])
            cipher = words[1] if len(words) > 1 else None
            slice_ = -(-size // n)
            procs = []
            for i in range(n):
                off = i * slice_
                if off >= size:
                    break
                ln = min(slice_, size - off)
                remote = 'dd of=%s bs=1M seek=%d oflag=seek_bytes conv=notrunc status=none' % (q(dst), off)
                cmd = 'dd if=%s bs=1M skip=%d count=%d iflag=skip_bytes,count_bytes status=none | %s' % (
                    q(src), off, ln, ' '.join(q(x) for x in self.ssh(remote, cipher)))
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
        if sampler:
            stop.set()
            sampler.join()
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
        if a.anchor_cipher:
            rows += ['ssh-cat×%d %s' % (n, a.anchor_cipher) for n in par]
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
        if a.timeline:
            md += self.timelines(sizes[-1], rows)
        print(md)
        if a.out:
            with open(a.out, 'w') as f:
                f.write(md)
            with open(a.out + '.json', 'w') as f:
                json.dump(dict(results=results, load_start=load_start, load_end=load_end,
                               command=a.command_line, link=a.link, rtt=a.rtt), f, indent=1)

    def timelines(self, mib, rows):
        """One more run of each row with the bytes landed sampled every
        100 ms: an SVG of the rate over time and each row's time to full
        rate (the 0.5 s rate first at 80 % of the run's best 0.5 s rate)."""
        src = self.make_source(mib)
        dst = os.path.join(self.data, 'dst-%d' % mib)
        lines = {}
        for row in rows:
            tl = []
            self.run_one(row, src, dst, mib * MIB, timeline=tl)
            lines[row] = tl

        def rates(tl):
            out = []
            for i, (t, b) in enumerate(tl):
                j = i
                while j > 0 and t - tl[j][0] < 0.5:
                    j -= 1
                if t - tl[j][0] > 0:
                    out.append((t, (b - tl[j][1]) / (t - tl[j][0]) / MIB))
            return out
        L = ['', 'Time to full rate, %d MiB (one more run of each row, bytes landed sampled every '
             '100 ms; rate over the last 0.5 s; "full" = 80 %% of that run\'s best): '
             '![rate over time](%s)' % (mib, os.path.basename(self.a.out or 'rate') + '.svg'), '',
             '| row | first byte landed (s) | full rate at (s) | best 0.5 s rate (MiB/s) | done (s) |',
             '|---|---|---|---|---|']
        for row, tl in lines.items():
            rs = rates(tl)
            best = max((r for _, r in rs), default=0)
            first = next((t for t, b in tl if b > 0), float('nan'))
            full = next((t for t, r in rs if r >= 0.8 * best), float('nan'))
            done = tl[-1][0] if tl else float('nan')
            L.append('| %s | %.2f | %.2f | %.0f | %.2f |' % (row.replace('ferrogen:', 'ferrogen '),
                                                             first, full, best, done))
        if self.a.out:
            self.svg(self.a.out + '.svg', {r: rates(tl) for r, tl in lines.items()}, mib)
        return '\n'.join(L) + '\n'

    def svg(self, path, series, mib):
        W, H, m = 720, 360, 50
        tmax = max((t for s in series.values() for t, _ in s), default=1)
        rmax = max((r for s in series.values() for _, r in s), default=1) * 1.1
        colors = ['#d62728', '#ff7f0e', '#2ca02c', '#1f77b4', '#555555', '#000000', '#9467bd']
        out = ['<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" '
               'font-size="11">' % (W, H), '<rect width="100%" height="100%" fill="white"/>',
               '<text x="%d" y="16">%d MiB push at %g ms RTT (%s): MiB/s landed (0.5 s window) over '
               'seconds since start</text>' % (m, mib, self.a.rtt, self.a.link)]
        x = lambda t: m + (W - 2 * m) * t / tmax
        y = lambda r: H - m - (H - 2 * m) * r / rmax
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (m, H - m, W - m, H - m))
        out.append('<line x1="%d" y1="%d" x2="%d" y2="%d" stroke="black"/>' % (m, m, m, H - m))
        for i in range(0, int(tmax) + 1, max(1, int(tmax) // 10)):
            out.append('<text x="%.0f" y="%d" text-anchor="middle">%d</text>' % (x(i), H - m + 14, i))
        step = max(10, int(rmax / 5) // 10 * 10)
        for r in range(0, int(rmax) + 1, step):
            out.append('<text x="%d" y="%.0f" text-anchor="end">%d</text>' % (m - 4, y(r) + 4, r))
        for k, (row, s) in enumerate(series.items()):
            c = colors[k % len(colors)]
            pts = ' '.join('%.1f,%.1f' % (x(t), y(r)) for t, r in s)
            out.append('<polyline fill="none" stroke="%s" stroke-width="1.5" points="%s"/>' % (c, pts))
            out.append('<text x="%d" y="%d" fill="%s">%s</text>' % (W - m - 150, m + 14 * k, c,
                                                                     row.replace('ferrogen:', 'ferrogen ')))
        out.append('</svg>')
        with open(path, 'w') as f:
            f.write('\n'.join(out) + '\n')

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
        anchors = ['ssh-cat×%d' % n for n in par]
        if a.anchor_cipher:
            anchors += ['ssh-cat×%d %s' % (n, a.anchor_cipher) for n in par]
        head = '| size | row | time | stripes at (s) |' + ''.join(' × %s |' % r for r in anchors)
        L.append(head)
        L.append('|' + '---|' * (4 + len(anchors)))
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
                for anchor in anchors:
                    ys = [x['secs'] for x in res.get(anchor, [])]
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
    ap.add_argument('--anchor-cipher')
    ap.add_argument('--out')
    ap.add_argument('--timeline', action='store_true')
    Bench(ap.parse_args()).main()


if __name__ == '__main__':
    main()
