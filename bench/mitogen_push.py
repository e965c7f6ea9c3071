#!/usr/bin/env python3
"""Push files to an ssh target with Mitogen's FileService, as ansible_mitogen does.

The parent (this process) runs a service Pool with mitogen.service.FileService
and registers each source path (ansible_mitogen's Connection.put_file); then it
calls, in the target context, a function that creates a temporary file next to
the destination, pulls the data with mitogen.service.FileService.get(parent,
path, fp), applies mode and times and renames it into place (as
ansible_mitogen.target.transfer_file does). Files are pushed one after
another, one call each, as Ansible's copy of a directory does.

  mitogen_push.py --ssh-config CFG --host ALIAS [--compression] SRC_FILE DST_FILE
  mitogen_push.py --ssh-config CFG --host ALIAS -r SRC_DIR DST_DIR

Prints one JSON line: connect_s (ssh + bootstrap + importing mitogen.service
in the target), transfer_s, files, bytes, mitogen version.
"""
import argparse
import json
import os
import sys
import time

import mitogen.core
import mitogen.master
import mitogen.service


def target_prepare_dirs(dirs):
    # Runs in the target: the directory skeleton of a recursive push.
    import os as _os
    for d in dirs:
        if not _os.path.isdir(d):
            _os.makedirs(d)
    return len(dirs)


def target_transfer_file(parent, in_path, out_path):
    # Runs in the target; mirrors ansible_mitogen.target.transfer_file().
    import os as _os
    import tempfile as _tempfile
    import mitogen.core as _core
    import mitogen.service as _service
    out_path = _os.path.abspath(out_path)
    fd, tmp_path = _tempfile.mkstemp(suffix='.tmp', prefix='.mitogen_push-',
                                     dir=_os.path.dirname(out_path))
    fp = _os.fdopen(fd, 'wb', _core.CHUNK_SIZE)
    try:
        try:
            ok, meta = _service.FileService.get(parent, in_path, fp)
        finally:
            fp.close()
        if not ok:
            raise IOError('transfer of %r was interrupted' % (in_path,))
        _os.chmod(tmp_path, meta['mode'] & 0o7777)
        _os.rename(tmp_path, out_path)
    except BaseException:
        if _os.path.exists(tmp_path):
            _os.unlink(tmp_path)
        raise
    _os.utime(out_path, (meta['atime'], meta['mtime']))
    return meta['size']


def target_warm():
    import mitogen.service  # noqa: F401  (so module shipping is not timed twice)
    return os.getpid()


def plan(src, dst, recursive):
    """(dirs to create, [(src, dst)]) with absolute paths."""
    src = os.path.abspath(src)
    if not recursive:
        return [], [(src, dst)]
    dirs, files = [dst], []
    for root, dnames, fnames in os.walk(src):
        dnames.sort()
        rel = os.path.relpath(root, src)
        base = dst if rel == '.' else os.path.join(dst, rel)
        for d in dnames:
            dirs.append(os.path.join(base, d))
        for f in sorted(fnames):
            files.append((os.path.join(root, f), os.path.join(base, f)))
    return dirs, files


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ssh-config', required=True)
    ap.add_argument('--host', required=True)
    ap.add_argument('--compression', action='store_true',
                    help="ssh compression (Mitogen's own default); off unless given")
    ap.add_argument('--python-path', default='/usr/bin/python3')
    ap.add_argument('-r', '--recursive', action='store_true')
    ap.add_argument('src')
    ap.add_argument('dst')
    a = ap.parse_args()

    dirs, files = plan(a.src, a.dst, a.recursive)
    broker = mitogen.master.Broker()
    router = mitogen.master.Router(broker)
    try:
        fs = mitogen.service.FileService(router)
        pool = mitogen.service.Pool(router, services=[fs])
        t0 = time.perf_counter()
        ctx = router.ssh(hostname=a.host, ssh_args=['-F', a.ssh_config],
                         check_host_keys='ignore', compression=a.compression,
                         python_path=a.python_path)
        ctx.call(target_warm)
        t1 = time.perf_counter()
        if dirs:
            ctx.call(target_prepare_dirs, dirs)
        total = 0
        me = router.myself()
        for src, dst in files:
            fs.register(src)
            total += ctx.call(target_transfer_file, me, src, dst)
        t2 = time.perf_counter()
        print(json.dumps({
            'connect_s': round(t1 - t0, 4), 'transfer_s': round(t2 - t1, 4),
            'files': len(files), 'bytes': total,
            'mitogen': '.'.join(map(str, mitogen.__version__)),
        }), flush=True)
        ctx.shutdown(wait=True)
        pool.stop()
    finally:
        broker.shutdown()
        broker.join()


if __name__ == '__main__':
    sys.exit(main())
