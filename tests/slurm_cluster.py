"""A real Slurm cluster on this machine, for the sbatch tests: one node, or several nodes in network namespaces.

    with SlurmCluster(nodes=1) as cluster:              # slurmd on the host, NodeAddr 127.0.0.1
        job = cluster.sbatch("slurm/train.sbatch", env={...})
        cluster.wait_done(job)
    with SlurmCluster(nodes=2, namespaces=True) as c:  # one `ip netns` per node on a bridge, 10.77.0.{1,2}

Everything lives in a temporary folder: slurm.conf, state, spool, logs and, unless the system's munged answers,
a private munged with its own key and socket (AuthInfo=socket=...). The daemons run in the foreground (`-D`) as
children of this process (slurmd under a child subreaper, `python slurm_cluster.py --reap`, that reaps the
slurmstepd processes it orphans), so stopping them is certain; clients find the cluster through SLURM_CONF
(`cluster.env`). In a namespace slurmd starts through `nsenter --net=/run/netns/<ns>` (`ip netns exec` would
remount /sys). On exit the jobs are cancelled, every process this cluster started (daemons, and what is left of
the jobs: whatever carries its SLURM_CONF in its environment) is ended by pid, and the namespaces, veths, bridge
and the folder are removed, also after a failure.

`require_slurm()` installs slurm-wlm and munge with apt-get when missing and running as root, else skips (in CI,
`CI=true`, it fails instead: CI's machine has Slurm and root, so a Slurm test that cannot run there is a failure).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SLURM_TOOLS = ("slurmctld", "slurmd", "slurmstepd", "sbatch", "srun", "squeue", "scontrol", "scancel", "sinfo",
               "munged", "munge", "unmunge")
NETNS_TOOLS = ("ip", "nsenter")
# States after which a job record will not change again (a requeued job goes back to PENDING instead).
DONE_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL",
               "DEADLINE", "PREEMPTED", "REVOKED", "SPECIAL_EXIT"}
INNER_IFNAME = "cdeth0"  # the namespaces' interface: the same name on every node, for GLOO_SOCKET_IFNAME
SYSTEM_MUNGE_SOCKET = Path("/run/munge/munge.socket.2")


def _missing(tools) -> list[str]:
    return [t for t in tools if shutil.which(t) is None and not Path("/usr/sbin", t).exists()]


def require_slurm(namespaces: bool = False) -> None:
    """Make sure Slurm and munge are installed (apt-get as root) and usable here, or skip with the reason (fail
    in CI: `conftest.skip_or_fail`)."""
    reason = None
    if os.geteuid() != 0:
        reason = "the Slurm tests start slurmctld/slurmd as root (SlurmUser=root) and need root"
    elif _missing(SLURM_TOOLS):
        if shutil.which("apt-get"):
            print(f"slurm tests: installing slurm-wlm and munge with apt-get ({', '.join(_missing(SLURM_TOOLS))} "
                  "missing)", flush=True)
            from conftest import apt_install  # here, not at the top: this file also runs as a helper script

            apt_install("slurm-wlm", "munge")
        if _missing(SLURM_TOOLS):
            reason = f"Slurm/munge not installed ({', '.join(_missing(SLURM_TOOLS))}); apt-get install slurm-wlm munge"
    if reason is None and namespaces:
        if _missing(NETNS_TOOLS):
            reason = f"network namespaces need {', '.join(_missing(NETNS_TOOLS))} (iproute2, util-linux)"
        else:
            probe = f"cdprobe{os.getpid() % 100000}"
            made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
            if made.returncode != 0:
                reason = f"cannot create network namespaces here: {made.stderr.strip()}"
    if reason:
        from conftest import skip_or_fail

        print(f"SKIP slurm tests: {reason}", flush=True)
        skip_or_fail(reason)


def _free_port(host: str = "0.0.0.0") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def parse_record(text: str) -> dict[str, str]:
    """`scontrol show -o` output (one record, Key=Value words) as a dict; values may not contain spaces."""
    fields: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if sep:
            fields[key] = value
    return fields


class SlurmCluster:
    """slurmctld + one slurmd per node, started in a temp folder and stopped (with everything they ran) on exit."""

    def __init__(self, nodes: int = 1, namespaces: bool = False, name: str = "cotdistill") -> None:
        if nodes > 1 and not namespaces:
            raise ValueError("more than one node on this machine needs namespaces=True")
        self.nodes, self.namespaces, self.name = nodes, namespaces, name
        self.tag = f"{os.getpid() % 10000}{int(time.time()) % 100:02d}"  # short: interface names <= 15 chars
        self.root = Path(tempfile.mkdtemp(prefix=f"slurm-{name}-"))
        self.conf = self.root / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.netns: list[str] = []
        self.bridge: str | None = None
        self.host_veths: list[str] = []
        self.subnet = ""
        self.controller_addr = "127.0.0.1"
        self.node_names: list[str] = []
        self.node_addrs: dict[str, str] = {}
        self.munge_socket = SYSTEM_MUNGE_SOCKET
        self.env: dict[str, str] = {}

    # -- lifecycle ------------------------------------------------------------------------------------------

    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop(keep_logs_on_error=exc[0] is not None)

    def start(self) -> None:
        for sub in ("state", "spool", "log", "munge"):
            (self.root / sub).mkdir()
        self._start_munge()
        if self.namespaces:
            self._make_namespaces()
        else:
            self.node_names = [socket.gethostname().split(".")[0]]
            self.node_addrs = {self.node_names[0]: "127.0.0.1"}
        self._write_conf()
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        for key in [k for k in self.env if k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_"))]:
            if key != "SLURM_CONF":
                del self.env[key]
        self._spawn(["slurmctld", "-D", "-i", "-c", "-f", str(self.conf)], "slurmctld")
        self._wait_for(lambda: "UP" in _run(["scontrol", "ping"], check=False, env=self.env, timeout=10).stdout,
                       30, "slurmctld to answer scontrol ping")
        for node in self.node_names:
            cmd = ["slurmd", "-D", "-N", node, "-f", str(self.conf)]
            if self.namespaces:
                cmd = ["nsenter", f"--net=/run/netns/{self._ns(node)}", *cmd]
            self._spawn(cmd, f"slurmd-{node}", reap=True)
        self._wait_for(self._all_idle, 60, "every node to be idle in sinfo")

    def stop(self, keep_logs_on_error: bool = False) -> None:
        """Cancel jobs, end every process started here, remove namespaces and the folder. Never raises."""
        if self.env:
            with contextlib.suppress(Exception):
                _run(["scancel", "--full", "--signal=KILL", "--state=RUNNING"], check=False, env=self.env, timeout=10)
                _run(["scancel", "--state=PENDING"], check=False, env=self.env, timeout=10)
                self._wait_for(lambda: not self.squeue(), 20, "jobs to end", fail=False)
        for proc in reversed(self.procs):  # daemons (through their reapers), munged last
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        # Whatever is left of the jobs (slurmstepd outlives slurmd) carries our SLURM_CONF in its environment.
        for pid in self._our_processes():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for ns in self.netns:
            _run(["ip", "netns", "del", ns], check=False)
        for veth in self.host_veths:
            _run(["ip", "link", "del", veth], check=False)
        if self.bridge:
            _run(["ip", "link", "del", self.bridge], check=False)
        if keep_logs_on_error:
            print(self.daemon_logs(), flush=True)
        shutil.rmtree(self.root, ignore_errors=True)

    # -- pieces -----------------------------------------------------------------------------------------------

    def _spawn(self, cmd: list[str], name: str, reap: bool = False) -> subprocess.Popen:
        """Start a foreground daemon; with `reap`, under a child subreaper that reaps what the daemon orphans
        (slurmd's slurmstepd processes), so nothing is left as a zombie of an init that does not reap."""
        if reap:
            cmd = [sys.executable, str(Path(__file__).resolve()), "--reap", *cmd]
        log = open(self.root / "log" / f"{name}.out", "wb")  # noqa: SIM115 - closed once the child has it
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**os.environ, "SLURM_CONF": str(self.conf)}, start_new_session=True)
        log.close()
        self.procs.append(proc)
        return proc

    def _start_munge(self) -> None:
        """Use the system munged if it answers; else a private one on a socket in the temp folder."""
        if SYSTEM_MUNGE_SOCKET.exists() and self._munge_works(SYSTEM_MUNGE_SOCKET):
            self.munge_socket = SYSTEM_MUNGE_SOCKET
            return
        folder = self.root / "munge"
        folder.chmod(0o700)
        key = folder / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        self.munge_socket = folder / "munge.socket"
        self._spawn(["munged", "--foreground", "--force", f"--socket={self.munge_socket}", f"--key-file={key}",
                     f"--pid-file={folder / 'munged.pid'}", f"--log-file={self.root / 'log' / 'munged.log'}",
                     f"--seed-file={folder / 'munged.seed'}"], "munged")
        self._wait_for(lambda: self._munge_works(self.munge_socket), 20, "munged to answer")

    @staticmethod
    def _munge_works(sock: Path) -> bool:
        if not sock.exists():
            return False
        cred = _run(["munge", "-n", "-S", str(sock)], check=False, timeout=10)
        if cred.returncode != 0:
            return False
        return _run(["unmunge", "-S", str(sock)], check=False, input=cred.stdout, timeout=10).returncode == 0

    def _ns(self, node: str) -> str:
        return f"cd{self.tag}-{node}"

    def _make_namespaces(self) -> None:
        used = _run(["ip", "-4", "-o", "addr"], check=False).stdout
        third = next((n for n in range(77, 250) if f" 10.{n}.0." not in used), 77)
        self.subnet = f"10.{third}.0"
        self.controller_addr = f"{self.subnet}.254"
        self.bridge = f"cdbr{self.tag}"
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.controller_addr}/24", "dev", self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])
        for i in range(1, self.nodes + 1):
            node, ns = f"node{i}", self._ns(f"node{i}")
            outer, inner = f"cdv{self.tag}{i}", f"cdp{self.tag}{i}"
            _run(["ip", "netns", "add", ns])
            self.netns.append(ns)
            _run(["ip", "link", "add", outer, "type", "veth", "peer", "name", inner])
            self.host_veths.append(outer)
            _run(["ip", "link", "set", inner, "netns", ns])
            _run(["ip", "link", "set", outer, "master", self.bridge])
            _run(["ip", "link", "set", outer, "up"])
            inside = ["ip", "-n", ns]
            _run([*inside, "link", "set", inner, "name", INNER_IFNAME])
            _run([*inside, "addr", "add", f"{self.subnet}.{i}/24", "dev", INNER_IFNAME])
            _run([*inside, "link", "set", INNER_IFNAME, "up"])
            _run([*inside, "link", "set", "lo", "up"])
            self.node_names.append(node)
            self.node_addrs[node] = f"{self.subnet}.{i}"

    def _write_conf(self) -> None:
        host = socket.gethostname().split(".")[0]
        ctld_port, slurmd_port = _free_port(), _free_port()
        r = self.root
        lines = [
            f"ClusterName={self.name}",
            f"SlurmctldHost={host}({self.controller_addr})",
            "SlurmUser=root",
            "SlurmdUser=root",
            f"SlurmctldPort={ctld_port}",
            f"SlurmdPort={slurmd_port}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            # cred_expire also delays a requeued job's start (default 120 s)
            f"AuthInfo=socket={self.munge_socket},cred_expire=5",
            f"StateSaveLocation={r / 'state'}",
            f"SlurmdSpoolDir={r / 'spool'}/%n",
            f"SlurmctldPidFile={r / 'slurmctld.pid'}",
            f"SlurmdPidFile={r / 'spool'}/slurmd-%n.pid",
            f"SlurmctldLogFile={r / 'log' / 'slurmctld.log'}",
            f"SlurmdLogFile={r / 'log'}/slurmd-%n.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core",
            "SchedulerType=sched/builtin",
            "SchedulerParameters=sched_interval=2",  # a requeued job becomes eligible in seconds; start it then
            "MpiDefault=none",
            "SwitchType=switch/none",
            "JobRequeue=1",
            "ReturnToService=2",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "JobCompType=jobcomp/none",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "MessageTimeout=20",
            "InactiveLimit=0",
            "KillWait=30",
            "MinJobAge=600",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
        ]
        for node in self.node_names:
            lines.append(f"NodeName={node} NodeAddr={self.node_addrs[node]} NodeHostname={host} CPUs=2 "
                         "State=UNKNOWN")
        lines.append(f"PartitionName=debug Nodes={','.join(self.node_names)} Default=YES MaxTime=INFINITE State=UP")
        self.conf.write_text("\n".join(lines) + "\n")

    def _all_idle(self) -> bool:
        out = _run(["sinfo", "-h", "-N", "-o", "%N %t"], check=False, env=self.env, timeout=10).stdout.split("\n")
        states = dict(line.split() for line in out if line.strip())
        return sorted(states) == sorted(self.node_names) and all(s == "idle" for s in states.values())

    def _wait_for(self, predicate, timeout: float, what: str, fail: bool = True) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            for proc in self.procs:
                if proc.poll() is not None and fail:
                    raise RuntimeError(f"{proc.args[0]} exited {proc.returncode} while waiting for {what}\n"
                                       f"{self.daemon_logs()}")
            time.sleep(0.3)
        if fail:
            raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}\n{self.daemon_logs()}")
        return False

    def _our_processes(self) -> list[int]:
        """Processes started by this cluster's daemons: SLURM_CONF=<our slurm.conf> in their environment."""
        needle = f"SLURM_CONF={self.conf}".encode() + b"\0"
        daemons = {p.pid for p in self.procs}
        found = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit() or int(proc.name) in daemons or int(proc.name) == os.getpid():
                continue
            with contextlib.suppress(OSError):
                if needle in (proc / "environ").read_bytes() + b"\0":
                    found.append(int(proc.name))
        return found

    # -- using it -----------------------------------------------------------------------------------------------

    def daemon_logs(self, lines: int = 40) -> str:
        parts = []
        for log in sorted((self.root / "log").glob("*")):
            with contextlib.suppress(OSError):
                tail = log.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {log.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    def interface_bytes(self, node: str) -> int:
        """Bytes received plus sent so far by a namespace node's veth (its host end, on the bridge)."""
        stats = Path("/sys/class/net") / self.host_veths[self.node_names.index(node)] / "statistics"
        return sum(int((stats / name).read_text()) for name in ("rx_bytes", "tx_bytes"))

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return _run(list(args), check=check, env=self.env, timeout=timeout)

    def sbatch(self, script: str | Path, *args: str, options: tuple[str, ...] = (), env: dict | None = None,
               cwd: str | Path | None = None) -> int:
        """Submit a batch script; returns the job id. `env` is added to the submitting environment (exported)."""
        proc = _run(["sbatch", "--parsable", *options, str(script), *args], env={**self.env, **(env or {})},
                    cwd=cwd, timeout=30)
        return int(proc.stdout.strip().split(";")[0])

    def job(self, job_id: int) -> dict[str, str]:
        """The job's record from `scontrol show job -o` ({} once it is gone)."""
        proc = self.command("scontrol", "show", "job", "-o", str(job_id), check=False)
        return parse_record(proc.stdout) if proc.returncode == 0 else {}

    def squeue(self) -> list[str]:
        return [line for line in self.command("squeue", "-h", "-o", "%i %T", check=False).stdout.splitlines() if line]

    def wait_for_job(self, job_id: int, predicate, timeout: float, what: str) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        record: dict[str, str] = {}
        while time.monotonic() < deadline:
            record = self.job(job_id)
            if predicate(record):
                return record
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id}: timed out after {timeout:.0f} s waiting for {what}; last record "
                           f"{record}\n{self.daemon_logs()}")

    def wait_done(self, job_id: int, timeout: float = 300) -> dict[str, str]:
        return self.wait_for_job(job_id, lambda r: r.get("JobState") in DONE_STATES, timeout, "the job to end")


def _reap_main(argv: list[str]) -> int:
    """`python slurm_cluster.py --reap CMD...`: run CMD as a child subreaper; forward TERM/INT; reap every
    orphan that lands here; exit with CMD's status once no child is left."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    child = subprocess.Popen(argv)
    alive = True

    def forward(signum, frame) -> None:
        if alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    status = 1
    while True:
        try:
            pid, raw = os.wait()
        except ChildProcessError:
            break
        if pid == child.pid:
            alive = False
            status = child.returncode = os.waitstatus_to_exitcode(raw)
    return status if status >= 0 else 128 - status


if __name__ == "__main__" and sys.argv[1:2] == ["--reap"]:
    sys.exit(_reap_main(sys.argv[2:]))
