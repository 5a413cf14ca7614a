"""A lab fleet: real sshd hosts in network namespaces of this machine.

    lab = Lab()                 # a bridge with a private /24, this session's names
    h1, h2 = lab.add(2)         # two hosts: own netns, hostname, /root, host key, sshd
    lab.inventory(path, [h1, h2], fleetsync_slots=2)
    lab.env()                   # ANSIBLE_CONFIG for a process that talks to the lab
    lab.kill(h1); lab.link(h2, up=False); lab.freeze(h2); lab.thaw(h2)
    lab.close()                 # idempotent; also runs at exit

Each host is `ip netns exec NS unshare --uts --pid
--fork --mount-proc`: its own network, hostname and process space (as separate
machines would have: a host sees and can kill only its own processes), sharing
this machine's filesystem except a private, empty /root. Addresses come from one
/24 in 10.231.0.0/16 that no route of this machine uses yet; names carry the pid
of the test session, so parallel sessions do not collide.

Teardown leaves nothing: ssh ControlMaster processes of the lab, every process
in the lab's namespaces (found by namespace inode as well as by name), the
namespaces, the veths, the bridge and the lab's directory.

`lab_or_skip()` says why a machine cannot run the lab (not root, no `ip`, no
sshd, netns not permitted) and the `make_lab` fixture skips with that reason.
"""
from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
from dataclasses import dataclass

import pytest

from fleetsync.controller import processes

SSHD = "/usr/sbin/sshd"
SUBNET_BASE = "10.231"          # the lab's /24 is 10.231.N.0/24, N picked free
FIRST_HOST = 11                 # hosts are .11, .12, ...; the controller is .1


def _run(*cmd: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def lab_or_skip() -> str | None:
    """Why this machine cannot run the lab, or None when it can."""
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, sshd)"
    for tool in ("ip", "unshare", "ssh", "ssh-keygen", "rsync"):
        if shutil.which(tool) is None:
            return f"the lab needs `{tool}` (iproute2, util-linux, openssh-client, rsync)"
    if not os.access(SSHD, os.X_OK):
        return f"the lab needs {SSHD} (openssh-server)"
    probe = f"fslprobe{os.getpid()}"
    r = _run("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        return f"network namespaces are not permitted here: {r.stderr.strip()}"
    r = _run("ip", "netns", "exec", probe, "unshare", "--uts", "--pid", "--fork",
             "--mount-proc", "true", check=False)
    _run("ip", "netns", "del", probe, check=False)
    if r.returncode != 0:
        # In a chroot whose / is not a mount point, unshare's --make-rslave / fails
        # (EINVAL): the namespaces work, the chroot needs `mount --bind DIR DIR`.
        where = ("" if os.path.ismount("/") else
                 " (/ is not a mount point: in a chroot, bind-mount its root onto itself)")
        return f"pid/uts namespaces are not permitted here{where}: {r.stderr.strip()}"
    return None


@dataclass
class Host:
    name: str        # inventory name and hostname
    ns: str          # network namespace
    ip: str
    veth: str        # the root-side end, on the bridge (link down = cut off)
    dir: str         # its files: host key, sshd_config, log, private /root
    proc: subprocess.Popen | None = None

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "sshd.log")

    @property
    def home(self) -> str:
        """The host's private /root."""
        return os.path.join(self.dir, "home")

    def accepted(self) -> int:
        """ssh connections this host's sshd accepted (one per TCP connection)."""
        try:
            with open(self.log, errors="replace") as f:
                return sum("Accepted publickey" in line for line in f)
        except OSError:
            return 0


class Lab:
    def __init__(self, base: str | None = None, pidns: bool = True):
        why = lab_or_skip()
        if why:
            raise RuntimeError(why)
        self.tag = f"fsl{os.getpid() % 100000}"           # fits IFNAMSIZ with suffixes
        self.base = base or tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp")
        self.hosts: list[Host] = []
        self.pidns = pidns      # False: hosts share this machine's process space
        self.closed = False
        self.bridge = f"{self.tag}br"
        self.key = os.path.join(self.base, "id_ed25519")
        self.cp_dir = os.path.join(self.base, "cp")
        os.makedirs(self.cp_dir, exist_ok=True)
        os.makedirs(os.path.join(self.base, "ansible-local"), exist_ok=True)
        atexit.register(self.close)
        _run("install", "-d", "-m", "0755", "/run/sshd")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleetsync-lab", "-f", self.key)
        self._net_up()
        self._write_ansible_cfg()

    # -- network ------------------------------------------------------------------
    def _net_up(self) -> None:
        used = _run("ip", "-o", "-4", "route", "show").stdout + \
            _run("ip", "-o", "-4", "addr", "show").stdout
        start = os.getpid() % 200 + 20
        for k in range(200):
            n = (start + k) % 250 + 1
            if f"{SUBNET_BASE}.{n}." not in used:
                break
        else:
            raise RuntimeError("no free /24 in 10.231.0.0/16")
        self.net = f"{SUBNET_BASE}.{n}"
        self.controller_ip = f"{self.net}.1"
        _run("ip", "link", "add", self.bridge, "type", "bridge")
        _run("ip", "addr", "add", f"{self.controller_ip}/24", "dev", self.bridge)
        _run("ip", "link", "set", self.bridge, "up")

    def _write_ansible_cfg(self) -> None:
        self.ansible_cfg = os.path.join(self.base, "ansible.cfg")
        with open(self.ansible_cfg, "w") as f:
            f.write(textwrap.dedent(f"""\
                [defaults]
                local_tmp = {self.base}/ansible-local
                remote_tmp = /root/.ansible/tmp
                host_key_checking = False
                [ssh_connection]
                control_path_dir = {self.cp_dir}
                pipelining = True
                [paramiko_connection]
                host_key_checking = False
                record_host_keys = False
                """))

    def env(self, **extra: str) -> dict[str, str]:
        """The environment for fleetsync / ansible-playbook talking to the lab."""
        return dict(os.environ, ANSIBLE_CONFIG=self.ansible_cfg, **extra)

    # -- hosts ----------------------------------------------------------------------
    def add(self, count: int = 1, ssh_client: bool = True) -> list[Host]:
        """Start `count` more hosts; with ssh_client each host's root can ssh to the
        others with the lab key (for DEST = IP:/path)."""
        new = []
        for _ in range(count):
            i = len(self.hosts) + 1
            name = f"h{i}"
            h = Host(name=name, ns=f"{self.tag}-{name}", ip=f"{self.net}.{FIRST_HOST + i - 1}",
                     veth=f"{self.tag}v{i}", dir=os.path.join(self.base, name))
            self.hosts.append(h)
            self._plumb(h)
            self._configure(h, ssh_client)
            self.start(h)
            new.append(h)
        for h in new:
            self._wait_listening(h)
        return new

    def _plumb(self, h: Host) -> None:
        peer = f"{h.veth}p"
        _run("ip", "netns", "add", h.ns)
        _run("ip", "link", "add", h.veth, "type", "veth", "peer", "name", peer)
        _run("ip", "link", "set", h.veth, "master", self.bridge)
        _run("ip", "link", "set", h.veth, "up")
        _run("ip", "link", "set", peer, "netns", h.ns)
        nsx = ("ip", "netns", "exec", h.ns)
        _run(*nsx, "ip", "link", "set", peer, "name", "eth0")
        _run(*nsx, "ip", "addr", "add", f"{h.ip}/24", "dev", "eth0")
        _run(*nsx, "ip", "link", "set", "eth0", "up")
        _run(*nsx, "ip", "link", "set", "lo", "up")

    def _configure(self, h: Host, ssh_client: bool) -> None:
        os.makedirs(os.path.join(h.home, ".ssh"), exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.path.join(h.dir, "host_key"))
        shutil.copy(self.key + ".pub", os.path.join(h.dir, "authorized_keys"))
        if ssh_client:
            shutil.copy(self.key, os.path.join(h.home, ".ssh", "id_ed25519"))
            os.chmod(os.path.join(h.home, ".ssh", "id_ed25519"), 0o600)
            with open(os.path.join(h.home, ".ssh", "config"), "w") as f:
                f.write("Host *\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n"
                        "  LogLevel ERROR\n  ConnectTimeout 10\n  ServerAliveInterval 5\n")
        with open(os.path.join(h.dir, "sshd_config"), "w") as f:
            f.write(textwrap.dedent(f"""\
                ListenAddress {h.ip}:22
                HostKey {h.dir}/host_key
                PidFile {h.dir}/sshd.pid
                AuthorizedKeysFile {h.dir}/authorized_keys
                PermitRootLogin prohibit-password
                PasswordAuthentication no
                KbdInteractiveAuthentication no
                UsePAM no
                StrictModes no
                UseDNS no
                MaxSessions 50
                MaxStartups 100:30:200
                Subsystem sftp internal-sftp
                """))
        r = _run(SSHD, "-t", "-f", os.path.join(h.dir, "sshd_config"), check=False)
        if r.returncode != 0:
            raise RuntimeError(f"sshd_config of {h.name}: {r.stderr.strip()}")

    def start(self, h: Host) -> None:
        """(Re)start the host's sshd, in its own uts/pid namespaces, /root private.
        sshd is pid 1 there (-D): killing it ends everything on the host. With
        pidns=False the hosts share this machine's process space (see test_fleet)."""
        script = (f"hostname {h.name} && mount --bind {h.home} /root && "
                  f"exec {SSHD} -D -f {h.dir}/sshd_config -E {h.log}")
        pid = ["--pid", "--fork", "--mount-proc"] if self.pidns else ["--mount"]
        h.proc = subprocess.Popen(
            ["ip", "netns", "exec", h.ns, "unshare", "--uts", *pid,
             "--propagation", "slave", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)

    def _wait_listening(self, h: Host, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with socket.create_connection((h.ip, 22), timeout=0.5) as s:
                    if s.recv(4).startswith(b"SSH"):
                        return
            except OSError:
                pass
            if h.proc and h.proc.poll() is not None:
                raise RuntimeError(f"sshd of {h.name} exited: see {h.log}")
            time.sleep(0.05)
        raise RuntimeError(f"sshd of {h.name} does not answer on {h.ip}:22")

    def restart(self, h: Host) -> None:
        """Start a killed host again (same identity: its /root keeps the worker id)."""
        self.kill(h)
        self.start(h)
        self._wait_listening(h)

    # -- faults ---------------------------------------------------------------------
    def pids(self, h: Host) -> list[int]:
        """Every process in the host's network namespace."""
        r = _run("ip", "netns", "pids", h.ns, check=False)
        return [int(p) for p in r.stdout.split()]

    def _signal_all(self, h: Host, sig: int) -> int:
        n = 0
        for pid in self.pids(h):
            try:
                os.kill(pid, sig)
                n += 1
            except ProcessLookupError:
                pass
        return n

    def kill(self, h: Host) -> None:
        """Every process of the host dies at once (a crash or power loss). All are
        stopped first, then killed: killed one by one, a process that saw another
        die could still clean up (an rsync receiver whose sender is gone removes its
        temporary file; seen under load), which a crash never lets it do. A stopped
        process forks nothing, so the stop passes end with one that finds no process
        it had not stopped; SIGKILL ends a stopped process without running it."""
        stopped: set[int] = set()
        while new := [p for p in self.pids(h) if p not in stopped]:
            for pid in new:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            stopped.update(new)
        for _ in range(50):
            if not self._signal_all(h, signal.SIGKILL):
                break
            time.sleep(0.02)
        if h.proc:
            try:
                h.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass

    def link(self, h: Host, up: bool) -> None:
        """Cut the host off the network (or connect it again): the root-side veth."""
        _run("ip", "link", "set", h.veth, "up" if up else "down")

    def freeze(self, h: Host) -> int:
        return self._signal_all(h, signal.SIGSTOP)

    def thaw(self, h: Host) -> int:
        return self._signal_all(h, signal.SIGCONT)

    def ssh(self, h: Host, command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        """Run a command on the host as root, with a fresh connection."""
        return _run("ssh", "-i", self.key, "-o", "StrictHostKeyChecking=no",
                    "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR",
                    "-o", "ControlMaster=no", "-o", "ControlPath=none", "-o",
                    "ConnectTimeout=5", f"root@{h.ip}", command, check=False, timeout=timeout)

    # -- inventory ------------------------------------------------------------------
    def host_line(self, h: Host, **hostvars) -> str:
        vars_ = {"ansible_host": h.ip, "ansible_user": "root",
                 "ansible_ssh_private_key_file": self.key,
                 "ansible_ssh_common_args":
                     "'-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null'",
                 "ansible_python_interpreter": "/usr/bin/python3"}
        vars_.update({k: str(v) for k, v in hostvars.items()})
        return h.name + " " + " ".join(f"{k}={v}" for k, v in vars_.items())

    def inventory(self, path: str, hosts: list[Host], per_host: dict | None = None,
                  **hostvars) -> str:
        """Write an INI inventory of these hosts (atomically: the controller re-reads it)."""
        per_host = per_host or {}
        lines = ["[movers]"] + [self.host_line(h, **(hostvars | per_host.get(h.name, {})))
                                for h in hosts]
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.replace(tmp, path)
        return path

    # -- teardown -------------------------------------------------------------------
    def ssh_masters(self) -> list[int]:
        """ssh ControlMaster processes of the lab (controller side)."""
        return [pid for pid in processes.matching(self.cp_dir.encode())
                if (processes.command_line(pid) or b"").startswith(b"ssh")]

    def _ns_inodes(self) -> set[int]:
        inodes = set()
        for h in self.hosts:
            try:
                inodes.add(os.stat(f"/run/netns/{h.ns}").st_ino)
            except OSError:
                pass
        return inodes

    def _pids_by_inode(self, inodes: set[int]) -> list[int]:
        out = []
        for pid in processes.pids():
            try:
                if os.stat(f"/proc/{pid}/ns/net").st_ino in inodes:
                    out.append(pid)
            except OSError:     # it ended meanwhile
                pass
        return out

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for pid in self.ssh_masters():
            _kill(pid)
        inodes = self._ns_inodes()
        for _ in range(50):
            pids = self._pids_by_inode(inodes) if inodes else []
            if not pids:
                break
            for pid in pids:
                _kill(pid, cont=True)
            time.sleep(0.02)
        for h in self.hosts:
            if h.proc:
                try:
                    h.proc.wait(2)
                except subprocess.TimeoutExpired:
                    pass
            _run("ip", "netns", "del", h.ns, check=False)
            _run("ip", "link", "del", h.veth, check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(self.base, ignore_errors=True)
        try:
            atexit.unregister(self.close)
        except Exception:
            pass

    def leftovers(self) -> list[str]:
        """What of this lab still exists (for tests of the teardown itself)."""
        left = []
        ns = _run("ip", "netns", "list", check=False).stdout
        links = _run("ip", "-o", "link", "show", check=False).stdout
        for h in self.hosts:
            if h.ns in ns.split():
                left.append(f"netns {h.ns}")
            if f" {h.veth}@" in links or f" {h.veth}:" in links:
                left.append(f"link {h.veth}")
        if f" {self.bridge}:" in links:
            left.append(f"bridge {self.bridge}")
        if os.path.exists(self.base):
            left.append(f"dir {self.base}")
        left += [f"ssh master {p}" for p in self.ssh_masters()]
        return left


def _kill(pid: int, cont: bool = False) -> None:
    try:
        if cont:
            os.kill(pid, signal.SIGCONT)
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


@pytest.fixture
def make_lab():
    """make_lab(n) -> a Lab with n hosts, removed after the test whatever happens."""
    why = lab_or_skip()
    if why:
        pytest.skip(why)
    labs: list[Lab] = []

    def make(n: int = 3, pidns: bool = True, **kw) -> Lab:
        lab = Lab(pidns=pidns)
        labs.append(lab)
        lab.add(n, **kw)
        return lab

    yield make
    for lab in labs:
        lab.close()
