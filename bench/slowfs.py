"""A slow mount for the benchmarks: a read-only FUSE passthrough of a directory that
adds a latency to every metadata call and every read, with the kernel's attribute
and entry caches off, so that each stat, lookup, opendir and readdir is a round trip,
as on NFS, Lustre, SMB or sshfs.

    python3 bench/slowfs.py --latency-ms 1 SOURCE MOUNTPOINT     # foreground; umount to stop

Runs with Debian's python3-fusepy (`make bench` installs it and fuse3), or fusepy
from PyPI. Needs /dev/fuse and root (or user_allow_other). The daemon serves every
request in a thread of its own (libfuse's multi-threaded loop), so parallel callers
overlap their latencies, as a network file system's do; a sleep releases the GIL.

Inode numbers pass through (use_ino), so `st_ino` is the source file's: fleetsync's
cutover pass compares inodes.
"""
from __future__ import annotations

import argparse
import errno
import os
import sys
import time

try:
    import fusepy as fuse          # Debian's python3-fusepy
except ImportError:                # pragma: no cover - fusepy from PyPI
    import fuse                    # type: ignore[no-redef]

STAT_KEYS = ("st_mode", "st_ino", "st_dev", "st_nlink", "st_uid", "st_gid", "st_size",
             "st_atime", "st_mtime", "st_ctime", "st_blocks", "st_blksize", "st_rdev")


class SlowPassthrough(fuse.Operations):
    """Read-only passthrough of `root`; every call sleeps `latency` seconds first."""

    def __init__(self, root: str, latency: float):
        self.root, self.latency = os.path.realpath(root), latency

    def _wait(self) -> None:
        if self.latency:
            time.sleep(self.latency)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, *args):
        try:
            return super().__call__(op, *args)
        except OSError as e:
            raise fuse.FuseOSError(e.errno or errno.EIO) from e

    # --- metadata
    def getattr(self, path, fh=None):
        self._wait()
        st = os.lstat(self._full(path))
        out = {k: getattr(st, k) for k in STAT_KEYS}
        # fusepy takes float times; keep nanoseconds so an mtime set back by 1 s is seen
        out["st_atime"], out["st_mtime"], out["st_ctime"] = (
            st.st_atime_ns / 1e9, st.st_mtime_ns / 1e9, st.st_ctime_ns / 1e9)
        return out

    def readlink(self, path):
        self._wait()
        return os.readlink(self._full(path))

    def opendir(self, path):
        self._wait()
        if not os.access(self._full(path), os.R_OK | os.X_OK):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def readdir(self, path, fh):
        self._wait()
        out = [".", ".."]
        with os.scandir(self._full(path)) as it:
            for e in it:
                # the type, as a network file system's READDIRPLUS gives it (d_type)
                mode = 0o040000 if e.is_dir(follow_symlinks=False) else (
                    0o120000 if e.is_symlink() else 0o100000)
                out.append((e.name, {"st_mode": mode, "st_ino": e.inode()}, 0))
        return out

    def releasedir(self, path, fh):
        return 0

    def access(self, path, amode):
        self._wait()
        if not os.access(self._full(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def statfs(self, path):
        self._wait()
        sv = os.statvfs(self._full(path))
        return {k: getattr(sv, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize",
                                             "f_favail", "f_ffree", "f_files", "f_flag",
                                             "f_frsize", "f_namemax")}

    def getxattr(self, path, name, position=0):
        self._wait()
        try:
            return os.getxattr(self._full(path), name, follow_symlinks=False)
        except OSError as e:
            raise fuse.FuseOSError(e.errno or errno.ENODATA) from e

    def listxattr(self, path):
        self._wait()
        return os.listxattr(self._full(path), follow_symlinks=False)

    # --- data
    def open(self, path, flags):
        self._wait()
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC):
            raise fuse.FuseOSError(errno.EROFS)
        return os.open(self._full(path), os.O_RDONLY)

    def read(self, path, size, offset, fh):
        self._wait()
        return os.pread(fh, size, offset)

    def release(self, path, fh):
        os.close(fh)
        return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source")
    ap.add_argument("mountpoint")
    ap.add_argument("--latency-ms", type=float, default=1.0,
                    help="added to every metadata call and read (default: 1)")
    args = ap.parse_args()
    if not os.path.isdir(args.source):
        print(f"slowfs: {args.source} is not a directory", file=sys.stderr)
        return 2
    ops = SlowPassthrough(args.source, args.latency_ms / 1000)
    fuse.FUSE(ops, args.mountpoint, foreground=True, ro=True, nothreads=False,
              allow_other=True, use_ino=True, default_permissions=True,
              attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="slowfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
