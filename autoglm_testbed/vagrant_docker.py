"""`make vagrant-docker`: Docker mode under the VM's own kernel (issue 15, item 5).

The nspawn hosts share the controller's kernel, which has no AppArmor, and they run
Docker in a container of their own; here the engine meets what a real host has: the
kernel's AppArmor and seccomp, cgroup v2 under a real PID 1. On the VM `make vagrant`
boots (same box, network and stand-ins):

1. `pyinfra` with the docker deploy (`deploys/docker.py`, the stand-in image and
   container toolkit repository the sandbox's Docker tests use): Debian's docker.io, the
   hardened `docker run` under the systemd unit.
2. Read on the VM: AppArmor enabled in the kernel and the container's main process
   confined by `docker-default` in enforce mode (from /proc, not from `docker inspect`,
   which names the profile even where it could not be loaded); seccomp filtering
   (`Seccomp: 2`) and no-new-privileges on that process; CIS Docker section 5 with no
   warning and nothing excluded; the container's cgroup v2 limits as the flags set them.
3. A memory-hungry process inside the container (busybox dd with a buffer larger than
   the limit) is OOM-killed by its cgroup; the container, dockerd and the VM carry on.
4. `kill -9` of the container's main process: systemd restarts the unit, a new
   container comes up healthy.
5. The same converge again changes nothing; the doctor reads the container confined.
6. A host as it is often found: Docker installed without apparmor (docker.io only
   Recommends it). The package removed and docker-default unloaded, the unit cannot
   start a container (Docker 20.10 refuses without apparmor_parser); a converge installs
   it, restarts dockerd and the unit, and the container is confined again. Then a no-op,
   and nothing rebooted the VM.

    python -m autoglm_testbed.vagrant_docker     # make vagrant-docker; VM stays up
    python -m autoglm_testbed.vagrant_vm --down  # make vagrant-down

Ends non-zero naming each expectation that did not hold; every step is bounded.
"""

from __future__ import annotations

import json
import re
import shlex
import sys
import time
from typing import Any

from autoglm_infra.stages.docker.args import CONTAINER_NAME
from autoglm_infra.stages.docker.files import UNIT_NAME
from autoglm_testbed.cis_docker import evaluate, format_findings, warnings
from autoglm_testbed.vagrant_kernel import (
    APT,
    HOST_NAME,
    Scenario,
    check_rows,
    row_text,
    run_scenario,
)
from autoglm_testbed.vagrant_vm import LOCAL_STATE, kernel_facts
from autoglm_testbed.world import docker_host_data

API_KEY = "sk-vm-" + "5" * 40  # the stand-in engine checks it; never printed
MEMORY = 256 * 1024**2  # docker_stage_data's docker_memory (256m), as cgroup v2 shows it
HOG = 400  # MiB that busybox dd asks for in one buffer: more than the container may use
WAIT = 600  # s for a restarted container to be healthy under TCG


def _field(text: str, name: str) -> str:
    """`Name:\tvalue` from a /proc/PID/status text ('' when absent)."""
    found = re.search(rf"^{name}:\s*(\S+)", text, re.MULTILINE)
    return found.group(1) if found else ""


class DockerScenario(Scenario):
    deploy = "deploys/docker.py"
    timeout = 3600  # docker.io and the toolkit under TCG on a loaded 2-core machine

    def inspect(self) -> dict[str, Any]:
        code, out = self.vm.text(f"docker inspect {CONTAINER_NAME}", 120)
        try:
            doc = json.loads(out)[0] if code == 0 else {}
        except (ValueError, IndexError):
            doc = {}
        return doc if isinstance(doc, dict) else {}

    def healthy(self, other_than: str = "") -> dict[str, Any]:
        """The container once healthy (and not `other_than`), {} after WAIT seconds."""
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            doc = self.inspect()
            health = (doc.get("State") or {}).get("Health") or {}
            if health.get("Status") == "healthy" and doc.get("Id") != other_than:
                return doc
            time.sleep(2)
        return {}

    def write_inventory(self) -> bool:
        standins = self.booted.standins
        if standins is None:
            self.problems.append("the stand-ins did not start with the VM")
            return False
        data = {**json.loads(LOCAL_STATE.read_text())["host_data"], **docker_host_data(standins)}
        self.inventory = self.out_dir / "inventory.py"
        self.inventory.write_text(f"vagrant = [({HOST_NAME!r}, {data!r})]\n")
        self.env = {"AUTOGLM_API_KEY": API_KEY}
        model_dir = shlex.quote(str(data["model_dir"]))
        # what the model stage leaves behind (this scenario runs the docker stage alone)
        code, out = self.step(
            "a model directory, as the model stage leaves it",
            f"mkdir -p {model_dir} && [ -s {model_dir}/config.json ] || "
            f"echo {{}} > {model_dir}/config.json",
            120,
        )
        if code != 0:
            self.problems.append(f"model directory: {out.strip()[-300:]}")
        return code == 0

    def run(self) -> None:
        if not self.write_inventory():
            return
        before = kernel_facts()
        code, out = self.step(
            "the kernel's AppArmor and cgroup file system",
            "cat /sys/module/apparmor/parameters/enabled; stat -fc %T /sys/fs/cgroup",
            120,
        )
        self.expect(
            code == 0 and out.split() == ["Y", "cgroup2fs"],
            "AppArmor enabled in the VM's kernel; cgroup v2 (unified) mounted",
            out.strip(),
        )
        if self.converge("converge 1 (Docker engine, toolkit, hardened container)") is None:
            return
        doc = self.healthy()
        self.expect(bool(doc), f"container {CONTAINER_NAME} healthy", str(self.inspect())[:400])
        if not doc:
            return
        self.confinement(doc)
        self.cis(doc)
        self.limits_and_oom(doc)
        self.kill_9(doc)
        self.no_op("converge 2 (must change nothing)")
        self.doctor_apparmor("ok", "docker-default (enforce)")
        self.found_without_apparmor()
        after = kernel_facts()
        self.expect(
            after.get("boots") == before.get("boots"),
            "the VM never rebooted (boots unchanged)",
            f"{before.get('boots')} -> {after.get('boots')}",
        )

    def no_op(self, title: str) -> None:
        again = self.converge(title)
        if again is not None:
            changed = ", ".join(again.changed())
            self.expect(not changed, f"{title}: nothing changed", changed)

    def doctor_apparmor(self, status: str, seen: str) -> None:
        started = time.monotonic()
        rows, tail = check_rows(self.out_dir, self.inventory, check="doctor", env=self.env)
        self.timings.append(("doctor", time.monotonic() - started))
        row = rows.get("apparmor")
        self.expect(
            row is not None and row["status"] == status and seen in row["evidence"],
            f"doctor apparmor: {status}, {seen}",
            row_text(row) if rows else tail,
        )

    def found_without_apparmor(self) -> None:
        _, out = self.step(
            "Docker without apparmor: the package purged, docker-default unloaded, the unit "
            "restarted",
            f"{APT} purge apparmor >/dev/null && "
            "printf docker-default > /sys/kernel/security/apparmor/.remove && "
            f"systemctl restart {UNIT_NAME}; sleep 20; "
            f"journalctl -u {UNIT_NAME} -q --no-pager -n 40 | grep -m1 -o 'AppArmor enabled on "
            "system but the docker-default profile could not be loaded.*' ; true",
            900,
        )
        self.expect(
            "could not be loaded" in out and "apparmor_parser" in out,
            "without apparmor_parser Docker 20.10 cannot start the container (its own error)",
            out.strip()[-400:],
        )
        repaired = self.converge("converge 3 (repairs: apparmor, dockerd, the unit)")
        if repaired is None:
            return
        changed = ", ".join(repaired.changed())
        self.expect(
            "apparmor" in changed and "restart dockerd" in changed,
            "converge 3 installed apparmor and restarted dockerd and the unit",
            changed,
        )
        doc = self.healthy()
        self.expect(bool(doc), "the container healthy again", str(self.inspect())[:300])
        if doc:
            self.confinement(doc)
        self.no_op("converge 4 (must change nothing)")

    def confinement(self, doc: dict[str, Any]) -> None:
        pid = int(doc["State"]["Pid"])
        code, out = self.step(
            "the container's main process: its AppArmor label, seccomp, no-new-privileges",
            f"cat /proc/{pid}/attr/current; echo; cat /proc/{pid}/status; "
            "echo @@; cat /sys/kernel/security/apparmor/profiles",
            120,
        )
        label, _, rest = out.partition("\n")
        status, _, profiles = rest.partition("@@")
        self.expect(
            code == 0 and label.strip("\x00 \n") == "docker-default (enforce)",
            "confined by AppArmor profile docker-default in enforce mode (/proc/PID/attr/current)",
            label.strip(),
        )
        self.expect(
            "docker-default (enforce)" in profiles,
            "docker-default is loaded in the kernel",
            " ".join(p for p in profiles.splitlines() if "docker" in p) or "(not loaded)",
        )
        self.expect(
            _field(status, "Seccomp") == "2",
            "seccomp filter mode (Seccomp: 2)",
            _field(status, "Seccomp"),
        )
        self.expect(
            _field(status, "NoNewPrivs") == "1" and _field(status, "CapEff") == "0" * 16,
            "no new privileges, no effective capabilities",
            f"NoNewPrivs {_field(status, 'NoNewPrivs')}, CapEff {_field(status, 'CapEff')}",
        )

    def cis(self, doc: dict[str, Any]) -> None:
        code, out = self.step(
            "CIS Docker section 5 inputs: docker info, docker top, daemon.json",
            f"docker info --format '{{{{json .}}}}'; echo @@; docker top {CONTAINER_NAME} "
            "-o pid,args; echo @@; cat /etc/docker/daemon.json",
            120,
        )
        try:
            info_text, top, daemon_text = out.split("@@\n")
            info, daemon = json.loads(info_text), json.loads(daemon_text)
        except ValueError:
            self.expect(False, "CIS section 5 inputs read", out.strip()[-400:])
            return
        processes = [line.split(None, 1)[-1] for line in top.splitlines()[1:]]
        findings = evaluate(doc, info, processes, daemon.get("no-new-privileges") is True)
        print("\n".join(f"        {line}" for line in format_findings(findings).splitlines()))
        warned = warnings(findings)  # nothing excluded: this kernel has AppArmor
        self.expect(
            code == 0 and not warned,
            "CIS Docker section 5: no WARN, 5.2 (AppArmor) included",
            "; ".join(f"{f.id} {f.evidence}" for f in warned),
        )

    def limits_and_oom(self, doc: dict[str, Any]) -> None:
        pid = int(doc["State"]["Pid"])
        cgroup = f"/sys/fs/cgroup$(sed -n 's/^0:://p' /proc/{pid}/cgroup)"
        read = (
            f"cd {cgroup} && echo $(cat memory.max memory.swap.max pids.max cpu.max) "
            "$(sed -n 's/^oom_kill //p' memory.events)"
        )
        code, out = self.step("the container's cgroup v2 limits", read, 120)
        fields = out.split()
        self.expect(
            code == 0 and fields[:5] == [str(MEMORY), "0", "256", "100000", "100000"],
            "cgroup v2: memory.max 256 MiB, no swap, pids.max 256, cpu.max one CPU",
            out.strip(),
        )
        kills_before = int(fields[5]) if code == 0 and len(fields) > 5 else -1
        code, out = self.step(
            f"a {HOG} MiB buffer inside the {MEMORY // 1024**2} MiB container (busybox dd)",
            f"docker exec {CONTAINER_NAME} busybox dd if=/dev/zero of=/dev/null "
            f"bs={HOG}M count=1; echo exit=$?",
            600,
        )
        self.expect("exit=137" in out, "the hog was killed (exit 137, SIGKILL)", out.strip()[-300:])
        code, out = self.step(
            "after the OOM kill: the cgroup's counter, the kernel's log, the VM",
            f"{read}; journalctl -k -q --no-pager | grep -c 'Memory cgroup out of memory'; "
            "systemctl is-active docker; systemctl is-system-running",
            120,
        )
        after = out.split()
        self.expect(
            len(after) > 5 and int(after[5]) > kills_before >= 0,
            "memory.events oom_kill went up in the container's own cgroup",
            f"{kills_before} -> {after[5] if len(after) > 5 else out.strip()}",
        )
        self.expect(
            len(after) > 6 and after[6] != "0",
            "the kernel logged 'Memory cgroup out of memory'",
            out.strip(),
        )
        self.expect(
            after[-2:] == ["active", "running"],
            "dockerd active and the VM's system running after the OOM kill",
            out.strip(),
        )
        now = self.inspect()
        self.expect(
            now.get("Id") == doc["Id"] and (now.get("State") or {}).get("Pid") == pid,
            "the server's own process survived (same container, same PID)",
            str((now.get("State") or {}).get("Pid")),
        )

    def kill_9(self, doc: dict[str, Any]) -> None:
        _, restarts = self.vm.text(f"systemctl show -p NRestarts --value {UNIT_NAME}", 120)
        started = time.monotonic()
        code, _ = self.step(
            "kill -9 of the container's main process", f"kill -9 {doc['State']['Pid']}", 120
        )
        again = self.healthy(other_than=doc["Id"]) if code == 0 else {}
        self.timings.append(("kill -9 to a healthy new container", time.monotonic() - started))
        _, now = self.vm.text(f"systemctl show -p NRestarts,ActiveState {UNIT_NAME}", 120)
        self.expect(
            bool(again) and f"NRestarts={int(restarts.strip() or 0) + 1}" in now,
            f"systemd restarted {UNIT_NAME} once and a new container is healthy",
            f"{now.strip()}; new container: {again.get('Id', 'none')[:12]}",
        )


def main(argv: list[str] | None = None) -> int:
    prog = "python -m autoglm_testbed.vagrant_docker"
    return run_scenario(prog, {"docker": DockerScenario}, argv)


if __name__ == "__main__":
    sys.exit(main())
