#!/usr/bin/env bash
# bench/delta.sh [--runs 3] [--size-mib 1024] [--envs local,ns] [--dir DIR]
#
# Delta transfer and --partial resume (issue 11), side by side with rsync in
# one run; prints a Markdown table (median of --runs, with min..max).
#
#   full       the file pushed whole to an empty destination
#   inplace    1 MiB changed in place in the middle
#   append     1 MiB appended
#   insert     1 MiB inserted at the front
#   resume     a --partial push interrupted (SIGINT) at half, then run again:
#              the second run is timed (rsync -a --partial likewise)
#
# Environments: `local` (ferrogen's local child; rsync local, which is
# --whole-file by default, and rsync --no-W) and `ns` (the emulated link of
# /work/shared/testbed/netns-up: run it first, e.g. `netns-up 20`; ferrogen
# and rsync both over `ssh -F /tmp/testbed-ssh/ssh_config.tb-host nshost`).
# ferrogen fsyncs (its default); rsync does not. Needs the release binary
# (cargo build --release --locked). Data lives in --dir (default /tmp/fg-delta).
set -euo pipefail
HERE=$(dirname "$(readlink -f "$0")")
ROOT=$(dirname "$HERE")
RUNS=3 SIZE=1024 ENVS=local,ns DIR=/tmp/fg-delta
while [ $# -gt 0 ]; do
    case $1 in
        --runs) RUNS=$2; shift 2 ;;
        --size-mib) SIZE=$2; shift 2 ;;
        --envs) ENVS=$2; shift 2 ;;
        --dir) DIR=$2; shift 2 ;;
        -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
        *) echo "delta.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done
export FG="$ROOT/target/release/ferrogen" RUNS SIZE ENVS DIR
[ -x "$FG" ] || { echo "delta.sh: build first: cargo build --release --locked" >&2; exit 1; }
exec python3 - <<'EOF'
import os, shutil, signal, statistics, subprocess, sys, time

FG, RUNS, SIZE, DIR = os.environ['FG'], int(os.environ['RUNS']), int(os.environ['SIZE']), os.environ['DIR']
ENVS = os.environ['ENVS'].split(',')
CFG = '/tmp/testbed-ssh/ssh_config.tb-host'
MIB = 1 << 20
os.makedirs(DIR, exist_ok=True)
base, src, dst = (os.path.join(DIR, n) for n in ('base', 'src', 'dst'))

def log(*a):
    print('[delta.sh %s]' % time.strftime('%H:%M:%S'), *a, file=sys.stderr, flush=True)

def write_random(path, size):
    with open(path, 'wb') as f:
        left = size
        while left:
            n = min(left, 64 * MIB)
            f.write(os.urandom(n))
            left -= n

def variant(kind, out):
    """The new file for a scenario, made from the base file."""
    if kind in ('full', 'inplace', 'resume'):
        shutil.copyfile(base, out)
        if kind == 'inplace':
            with open(out, 'r+b') as f:
                f.seek(SIZE * MIB // 2)
                f.write(os.urandom(MIB))
    elif kind == 'append':
        shutil.copyfile(base, out)
        with open(out, 'ab') as f:
            f.write(os.urandom(MIB))
    elif kind == 'insert':
        with open(out, 'wb') as f, open(base, 'rb') as b:
            f.write(os.urandom(MIB))
            shutil.copyfileobj(b, f, 16 * MIB)

def wrap(env, argv):
    return ['ip', 'netns', 'exec', 'tb-ctl'] + argv if env == 'ns' else argv

def command(env, tool, s, d, extra=()):
    if tool.startswith('ferrogen'):
        argv = [FG, 'push', '--json'] + list(extra)
        if env == 'ns':
            argv += ['-H', 'nshost', '-e', 'ssh -F %s' % CFG]
        return wrap(env, argv + [s, d])
    argv = ['rsync', '-a'] + list(extra)
    if env == 'ns':
        return wrap(env, argv + ['-e', 'ssh -F %s' % CFG, s, 'nshost:%s' % d])
    return argv + [s, d]

def reset_dst(old):
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    if old:
        shutil.copyfile(base, os.path.join(dst, 'blob'))
    os.sync()

def check(new):
    r = subprocess.run(['cmp', new, os.path.join(dst, 'blob')], capture_output=True)
    if r.returncode != 0:
        raise SystemExit('result differs: %s' % r.stdout.decode())

def timed(argv):
    t0 = time.monotonic()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    dt = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit('%s failed: %s' % (' '.join(argv), r.stderr.decode()[-2000:]))
    return dt

def interrupt_at_half(argv, watch):
    """Runs argv until a file in dst matching watch() holds half the size."""
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    half = SIZE * MIB // 2
    while True:
        sizes = [os.path.getsize(os.path.join(dst, n)) for n in os.listdir(dst) if watch(n)]
        if sizes and max(sizes) >= half:
            break
        if p.poll() is not None:
            raise SystemExit('the push ended before half: %s' % ' '.join(argv))
        time.sleep(0.01)
    p.send_signal(signal.SIGINT)
    p.wait()
    left = sorted(os.listdir(dst))
    return left

rows = []  # (env, scenario, tool, [seconds])
new = os.path.join(DIR, 'src', 'blob')
log('making %d MiB of data in %s' % (SIZE, DIR))
if not os.path.exists(base) or os.path.getsize(base) != SIZE * MIB:
    write_random(base, SIZE * MIB)
os.makedirs(os.path.dirname(new), exist_ok=True)
for env in ENVS:
    # Locally both tools send whole files by default; --no-W makes them
    # do a delta. Over ssh both do a delta by default; -W sends whole.
    if env == 'local':
        delta = [('ferrogen', ()), ('ferrogen --no-W', ('--no-whole-file',)),
                 ('rsync -a', ()), ('rsync -a --no-W', ('--no-W',))]
    else:
        delta = [('ferrogen', ()), ('ferrogen --no-fsync', ('--no-fsync',)),
                 ('ferrogen -W', ('-W',)), ('rsync -a', ())]
    plan = [
        ('full', False, [('ferrogen', ()), ('ferrogen --no-fsync', ('--no-fsync',)), ('rsync -a', ())]),
        ('inplace', True, delta),
        ('append', True, delta[:2] + delta[-1:] if env == 'ns' else delta),
        ('insert', True, delta[:2] + delta[-1:] if env == 'ns' else delta),
    ]
    for scenario, old, tools in plan:
        variant(scenario, new)
        for tool, extra in tools:
            times = []
            for i in range(RUNS):
                reset_dst(old)
                times.append(timed(command(env, tool, new, dst + '/', extra)))
                check(new)
            log(env, scenario, tool, ['%.2f' % t for t in times])
            rows.append((env, scenario, tool, times))
    # resume: interrupted at half, then timed
    variant('resume', new)
    for tool in ('ferrogen --partial', 'rsync -a --partial'):
        times = []
        for i in range(RUNS):
            reset_dst(False)
            if tool.startswith('ferrogen'):
                argv = command(env, tool, new, dst + '/', ('--partial',))
                left = interrupt_at_half(argv, lambda n: n.endswith('.ferrogen-partial'))
            else:
                argv = command(env, tool, new, dst + '/', ('--partial',))
                left = interrupt_at_half(argv, lambda n: n.startswith('.blob.') or n == 'blob')
            os.sync()
            times.append(timed(argv))
            check(new)
            log(env, 'resume', tool, 'left after the interrupt:', left, '%.2f' % times[-1])
        rows.append((env, 'resume', tool, times))

def fmt(ts):
    m = statistics.median(ts)
    return '%.2f s (%.2f..%.2f)' % (m, min(ts), max(ts))

print('| env | scenario | tool | median (min..max) of %d | vs full ferrogen push |' % RUNS)
print('|---|---|---|---:|---:|')
full = {e: statistics.median(t) for (e, s, tool, t) in rows if s == 'full' and tool == 'ferrogen'}
for env, scenario, tool, ts in rows:
    ratio = full.get(env, 0) / statistics.median(ts) if statistics.median(ts) else 0
    print('| %s | %s | %s | %s | %.1f× faster |' % (env, scenario, tool, fmt(ts), ratio))
EOF
