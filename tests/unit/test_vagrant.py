"""The Vagrantfile, the vagrant inventory, the local box's build inputs and the KVM probe.

The VM scenario itself is `make vagrant` (README: Test VMs); these are its pure parts.
"""

from __future__ import annotations

import json
import re
import runpy
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from autoglm_testbed.kvm_probe import decide, probe_argv
from autoglm_testbed.vagrant_box import (
    BOX_NAME,
    BOX_PACKAGES,
    ROOT_LABEL,
    box_cache_key,
    box_metadata,
    box_name,
    box_prep_files,
)
from autoglm_testbed.vagrant_vm import Net, local_state, network_xml, vm_host_data

ROOT = Path(__file__).resolve().parents[2]
KEY = "ssh-rsa AAAAB3Nza vagrant insecure public key\n"


def test_vagrantfile_validates() -> None:
    if not shutil.which("vagrant"):
        pytest.fail("vagrant is needed: `make deps` installs Debian's vagrant package")
    out = subprocess.run(
        ["vagrant", "validate", "--ignore-provider"], cwd=ROOT, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert "validated successfully" in out.stdout


def vagrantfile_machines() -> dict[str, str]:
    """machine -> box, from the Vagrantfile's LOCAL_BOX and PUBLIC_BOXES table."""
    text = (ROOT / "Vagrantfile").read_text()
    machines = {
        line.split('"')[1]: line.split('"')[3]
        for line in text.splitlines()
        if line.strip().startswith('"') and "=>" in line
    }
    local_box = next(ln.split('"')[1] for ln in text.splitlines() if ln.startswith("LOCAL_BOX"))
    return {"local": local_box, **machines}


def test_local_machine_is_the_default_and_public_boxes_are_explicit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    machines = vagrantfile_machines()
    assert machines["local"] == "autoglm/debian12-local"
    assert set(machines) == {"local", "ubuntu2204", "ubuntu2404", "debian12"}
    text = (ROOT / "Vagrantfile").read_text()
    assert 'config.vm.define "local", primary: true' in text
    assert "config.vm.define name, autostart: false" in text
    monkeypatch.delenv("AUTOGLM_VAGRANT_MACHINES", raising=False)
    default = runpy.run_path(str(ROOT / "inventories" / "vagrant.py"))["vagrant"]
    assert [name for name, _ in default] == ["@vagrant/local"]


def test_inventory_names_public_machines_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTOGLM_VAGRANT_MACHINES", "ubuntu2204,debian12")
    hosts = runpy.run_path(str(ROOT / "inventories" / "vagrant.py"))["vagrant"]
    assert hosts == [
        ("@vagrant/ubuntu2204", {"_sudo": True}),
        ("@vagrant/debian12", {"_sudo": True}),
    ]
    assert {name.split("/")[1] for name, _ in hosts} <= set(vagrantfile_machines())


def test_box_key_changes_with_every_input() -> None:
    key = box_cache_key(KEY, "base1", week="2026-W49")
    assert key == box_cache_key(KEY, "base1", week="2026-W49")
    others = {
        box_cache_key(KEY, "base2", week="2026-W49"),
        box_cache_key(KEY.replace("insecure", "other"), "base1", week="2026-W49"),
        box_cache_key(KEY, "base1", week="2026-W50"),
        box_cache_key(KEY, "base1", packages=(*BOX_PACKAGES, "vim"), week="2026-W49"),
        box_cache_key(KEY, "base1", week="2026-W49", version=99),
        box_cache_key(KEY, "base1", week="2026-W49", suite="trixie"),
    }
    assert key not in others and len(others) == 6


def test_box_boots_its_installed_kernel_from_the_labelled_root() -> None:
    files = box_prep_files(KEY)
    boot = files["/boot/extlinux/extlinux.conf"][0]
    # Debian's kernel postinst keeps /vmlinuz on the newest kernel: an upgrade boots it.
    assert "LINUX /vmlinuz\n" in boot and "INITRD /initrd.img\n" in boot
    assert f"root=LABEL={ROOT_LABEL}" in boot and "console=ttyS0" in boot
    assert "do_symlinks = yes" in files["/etc/kernel-img.conf"][0]
    assert files["/etc/fstab"][0].startswith(f"LABEL={ROOT_LABEL} / ext4")
    assert files["/home/vagrant/.ssh/authorized_keys"] == (KEY, 0o600)
    assert files["/etc/sudoers.d/vagrant"] == ("vagrant ALL=(ALL) NOPASSWD:ALL\n", 0o440)
    assert {"linux-image-cloud-amd64", "extlinux", "udev"} <= set(BOX_PACKAGES)


def test_box_metadata_is_vagrant_libvirt_s_format() -> None:
    assert box_metadata(12) == {"provider": "libvirt", "format": "qcow2", "virtual_size": 12}


def test_probe_uses_kvm_only_when_the_guest_kernel_ran() -> None:
    booted = "[    1.9] Kernel panic - not syncing: VFS: Unable to mount root fs on unknown"
    assert decide(True, 0, booted, 2.1).driver == "kvm"
    stalled = decide(True, None, "SeaBIOS\nBooting from ROM..", 30)
    assert stalled.driver == "qemu" and "no visible progress in 30 s" in stalled.reason
    aborted = decide(True, -6, "kvm_buf_set_msrs: Assertion failed.", 0.3)
    assert aborted.driver == "qemu" and "exited -6: kvm_buf_set_msrs" in aborted.reason
    assert decide(False, None, "", 0).driver == "qemu"


def test_probe_boots_the_kernel_under_kvm_and_exits_at_its_panic() -> None:
    argv = probe_argv(Path("/k"))
    assert argv[argv.index("-accel") + 1] == "kvm" and "-no-reboot" in argv
    assert "panic=-1" in argv[argv.index("-append") + 1] and argv[argv.index("-kernel") + 1] == "/k"


def test_network_is_the_sandbox_bridge_with_dhcp_above_the_hosts() -> None:
    xml = network_xml(Net("autoglm-vagrant", "ag-vagrant-br", "10.231.3.1", "10.231.3"))
    assert "<bridge name='ag-vagrant-br'" in xml and "<forward mode='nat'/>" in xml
    assert "address='10.231.3.1' netmask='255.255.255.0'" in xml
    assert "start='10.231.3.100' end='10.231.3.199'" in xml


def test_vm_state_carries_the_world_and_what_a_vm_allows(tmp_path: Path) -> None:
    from autoglm_testbed.kvm_probe import ProbeResult

    data = vm_host_data({"nvidia_reboot": "never", "hub_endpoint": "http://h"}, tmp_path / "kh")
    assert data["nvidia_reboot"] == "if-needed" and data["_sudo"] is True
    assert data["hub_endpoint"] == "http://h" and data["serve_mode"] == "venv"
    net = Net("autoglm-vagrant", "ag-vagrant-br", "10.231.3.1", "10.231.3")
    state = local_state(ProbeResult("qemu", "why"), net, "pool", tmp_path / "c", data)
    assert json.loads(json.dumps(state))["network_address"] == "10.231.3.0/24"
    assert state["driver"] == "qemu" and state["boot_timeout"] == 600
    assert state["box"] == "autoglm/debian12-local"  # what the Vagrantfile boots
    probe = ProbeResult("qemu", "why")
    trixie = local_state(probe, net, "p", tmp_path, data, box=box_name("trixie"))
    assert trixie["box"] == "autoglm/debian13-local"
    assert box_name() == BOX_NAME  # the default machine's box is Debian 12's


def test_vagrant_errors_show_the_last_lines_without_the_progress_bar() -> None:
    from autoglm_testbed.vagrant_vm import readable_tail

    log = "==> local: Uploading\n\x1b[KProgress: 1%\rProgress: 99%\n" + "x" * 500 + "\n"
    log += "Timed out while waiting for the machine to boot.\n"
    tail = readable_tail(log, lines=3, width=40)
    assert tail.splitlines() == ["==> local: Uploading", "x" * 40, tail.splitlines()[-1]]
    assert "Timed out while waiting" in tail and "Progress" not in tail


def test_kernel_facts_are_read_from_key_value_lines() -> None:
    from autoglm_testbed.vagrant_vm import KERNEL_FACTS_SCRIPT, parse_kernel_facts

    out = "Connection to 10.231.3.142 closed.\nvirt=qemu\nkernel=6.1.0-57-cloud-amd64\nboots=2\n"
    assert parse_kernel_facts(out) == {
        "virt": "qemu",
        "kernel": "6.1.0-57-cloud-amd64",
        "boots": "2",
    }
    assert "lsinitramfs /boot/initrd.img-$(uname -r)" in KERNEL_FACTS_SCRIPT
    assert "etc/modprobe.d/autoglm-blacklist-nouveau.conf$" in KERNEL_FACTS_SCRIPT


def test_a_reboot_counts_once_and_boots_with_the_blacklist() -> None:
    from autoglm_testbed.vagrant_vm import reboot_problems

    before = {"boots": "1", "blacklist_in_initramfs": "1", "nouveau_loaded": "0"}
    good = {"state": "running", **before, "boots": "2"}
    assert reboot_problems(before, good) == []
    twice = reboot_problems(before, {**good, "boots": "3"})
    assert twice == ["journalctl --list-boots went from 1 to 3, expected exactly one more boot"]
    assert (
        "not in the running kernel's initramfs"
        in reboot_problems(before, {**good, "blacklist_in_initramfs": "0"})[0]
    )
    assert reboot_problems(before, {**good, "nouveau_loaded": "1"}) == ["nouveau loaded: '1'"]
    assert reboot_problems(before, {**good, "state": "starting"}) == [
        "systemctl is-system-running after the reboot: 'starting'"
    ]
    assert len(reboot_problems(before, {})) == 4  # the VM answered nothing


def test_the_box_kernel_s_release_is_read_from_its_boot_header(tmp_path: Path) -> None:
    from autoglm_testbed.vagrant_box import kernel_release

    # A bzImage's setup header (Linux boot protocol): "HdrS" at 0x202, and at 0x20E the
    # offset (minus 0x200) of the version string, which starts with what `uname -r` says.
    image = bytearray(0x3000)
    image[0x202:0x206] = b"HdrS"
    image[0x20E:0x210] = (0x2000 - 0x200).to_bytes(2, "little")
    version = b"6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP PREEMPT_DYNAMIC\0"
    image[0x2000 : 0x2000 + len(version)] = version
    (tmp_path / "vmlinuz").write_bytes(bytes(image))
    assert kernel_release(tmp_path / "vmlinuz") == "6.1.0-57-cloud-amd64"
    (tmp_path / "initrd").write_bytes(b"\x1f\x8b" + bytes(0x1000))
    assert kernel_release(tmp_path / "initrd") == ""


def test_a_fresh_vm_must_boot_the_box_s_kernel_from_its_disk() -> None:
    from autoglm_testbed.vagrant_vm import BOOT_FACTS_SCRIPT, boot_check_problems

    kernel = "6.1.0-57-cloud-amd64"
    xml = "<domain type='qemu'><os><type>hvm</type><boot dev='hd'/></os></domain>"
    good = {
        "state": "running",
        "virt": "qemu",
        "kernel": kernel,
        "root": "/dev/vda1",
        "boot_image": "BOOT_IMAGE=/vmlinuz",
        "boots": "1",
        "insecure_key": "0",
        "debian": "12",
    }
    assert set(good) == set(re.findall(r"echo (\w+)=", BOOT_FACTS_SCRIPT))
    assert boot_check_problems(good, kernel, xml) == []
    assert boot_check_problems({**good, "virt": "none"}, kernel, xml) == [
        "systemd-detect-virt --vm names no hypervisor: 'none'"
    ]
    assert boot_check_problems(good, "6.1.0-58-cloud-amd64", xml) == [
        "running kernel '6.1.0-57-cloud-amd64' is not the box's installed '6.1.0-58-cloud-amd64'"
    ]
    direct = xml.replace("<boot dev='hd'/>", "<kernel>/tmp/vmlinuz</kernel>")
    assert "no bootloader" in boot_check_problems(good, kernel, direct)[0]
    assert boot_check_problems({**good, "boot_image": ""}, kernel, xml) == [
        "no bootloader's BOOT_IMAGE= on the kernel command line"
    ]
    assert boot_check_problems({**good, "root": "overlay"}, kernel, xml) == [
        "the root file system is not on the VM's disk: 'overlay'"
    ]
    assert boot_check_problems({**good, "insecure_key": "1"}, kernel, xml) == [
        "Vagrant's insecure key is still authorized ('1' lines)"
    ]
    assert boot_check_problems(good, kernel, xml, debian="13") == [
        "/etc/os-release says Debian '12', not 13"
    ]
    assert len(boot_check_problems({}, kernel, xml)) == 8  # the VM answered nothing


def test_the_secure_boot_vm_boots_signed_loaders_with_smm_protected_variables(
    tmp_path: Path,
) -> None:
    from autoglm_testbed.secureboot_vm import OVMF_CODE, grub_cfg, qemu_argv

    argv = qemu_argv("qemu", tmp_path / "d", tmp_path / "e", tmp_path / "v", 2222, tmp_path / "c",
                     tmp_path / "p")  # fmt: skip
    joined = " ".join(argv)
    assert "q35,smm=on,accel=tcg" in joined
    assert "driver=cfi.pflash01,property=secure,value=on" in joined
    assert f"readonly=on,file={OVMF_CODE}" in joined and OVMF_CODE.name.endswith("secboot.fd")
    assert "hostfwd=tcp:127.0.0.1:2222-:22" in joined  # loopback only
    assert "accel=kvm" in " ".join(qemu_argv("kvm", *[tmp_path] * 3, 1, tmp_path, tmp_path))
    assert f"--label {ROOT_LABEL}" in grub_cfg() and f"root=LABEL={ROOT_LABEL}" in grub_cfg()


def test_the_secure_boot_vm_must_show_the_refusal_it_was_built_for() -> None:
    from autoglm_infra.common.host_profile import HostProfile
    from autoglm_testbed.secureboot_vm import sb_problems

    profile = HostProfile(efi=True, secure_boot="on", module_signing_key="not-enrolled")
    refused = (1, "modprobe: ERROR: could not insert 'nvidia': Key was rejected by service")
    rows = {
        "module built": {"status": "ok", "evidence": "nvidia.ko (built by DKMS, signed by DKMS "
                         "module signing key)"},
        "module loaded": {"status": "skip", "evidence": "kernel log: Loading of module with "
                          "unavailable key is rejected"},
    }  # fmt: skip
    assert sb_problems("SecureBoot enabled\n", profile, refused, rows) == []
    off = sb_problems("SecureBoot disabled\n", profile, refused, rows)
    assert len(off) == 1 and "SecureBoot enabled" in off[0]
    unread = HostProfile(efi=True, secure_boot="unknown")
    assert len(sb_problems("SecureBoot enabled\n", unread, refused, rows)) == 2  # + preflight
    assert "modprobe nvidia" in sb_problems("SecureBoot enabled", profile, (0, ""), rows)[0]
    assert len(sb_problems("SecureBoot enabled", profile, refused, {})) == 2


def test_a_zombie_daemon_does_not_count_as_running() -> None:
    """A stopped libvirtd stays a zombie where no init reaps it; `pgrep -x` still listed it,
    so the next VM (CI's Debian 13 boot check) waited for a libvirtd nobody had started."""
    from autoglm_testbed.vagrant_vm import running_pids

    live = subprocess.Popen(["sleep", "30"])
    dead = subprocess.Popen(["sleep", "0"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{dead.pid}/stat").read_text().split(") ")[1][0] != "Z":
            assert time.monotonic() < deadline, "the child never became a zombie"
            time.sleep(0.05)
        found = running_pids("sleep")
        assert live.pid in found and dead.pid not in found
        pgrep = subprocess.run(["pgrep", "-x", "sleep"], capture_output=True, text=True)
        assert str(dead.pid) in pgrep.stdout.split()  # what the old check believed
    finally:
        live.kill()
        live.wait()
        dead.wait()
