"""A stand-in for NVIDIA's DKMS driver package: a real kernel module source that DKMS builds.

Modelled on NVIDIA's Debian packages (`nvidia-kernel-dkms` / `nvidia-kernel-open-dkms`
in the CUDA repository): the source goes to /usr/src/<module>-<version>/ with a dkms.conf,
and the maintainer scripts are the ones `dh_dkms` generates (`common.postinst` builds and
installs the module for the newest kernel with headers and the running one). The module
itself does what the real nvidia.ko does without a GPU: its init finds no NVIDIA display
device on the PCI bus, logs "NVRM: No NVIDIA GPU found." and fails with -ENODEV, so
`modprobe nvidia` says "No such device".

    deb = build_dkms_deb(Path("out"), version="550.54.15")
"""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

MODULE = "nvidia"
DEFAULT_PACKAGE = "nvidia-kernel-dkms"
DKMS_DEPENDS = "dkms (>= 2.1.0.0)"


def module_source(version: str) -> str:
    """C source of the stand-in module (GPL: it links only exported symbols)."""
    return f"""\
// Stand-in for NVIDIA's kernel module (autoglm-infra testbed).
#include <linux/module.h>
#include <linux/pci.h>

#define NV_VENDOR 0x10de

static int __init nv_standin_init(void)
{{
	struct pci_dev *dev = NULL;

	while ((dev = pci_get_device(NV_VENDOR, PCI_ANY_ID, dev)) != NULL) {{
		if ((dev->class >> 16) == PCI_BASE_CLASS_DISPLAY) {{
			pci_dev_put(dev);
			pr_info("NVRM: loading stand-in module {version}\\n");
			return 0;
		}}
	}}
	pr_info("NVRM: No NVIDIA GPU found.\\n");
	return -ENODEV;
}}

static void __exit nv_standin_exit(void)
{{
}}

module_init(nv_standin_init);
module_exit(nv_standin_exit);
MODULE_LICENSE("GPL");
MODULE_VERSION("{version}");
MODULE_DESCRIPTION("autoglm-infra stand-in for the NVIDIA driver module");
"""


def dkms_conf(version: str) -> str:
    return (
        f'PACKAGE_NAME="{MODULE}"\nPACKAGE_VERSION="{version}"\n'
        f'BUILT_MODULE_NAME[0]="{MODULE}"\nDEST_MODULE_LOCATION[0]="/updates/dkms"\n'
        'AUTOINSTALL="yes"\n'
        'MAKE[0]="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/'
        '${PACKAGE_VERSION}/build modules"\n'
        'CLEAN="make -C ${kernel_source_dir} M=${dkms_tree}/${PACKAGE_NAME}/'
        '${PACKAGE_VERSION}/build clean"\n'
    )


def source_files(version: str) -> dict[str, tuple[str, int]]:
    """The DKMS source tree: absolute path -> (content, mode)."""
    src = f"/usr/src/{MODULE}-{version}"
    return {
        f"{src}/dkms.conf": (dkms_conf(version), 0o644),
        f"{src}/Makefile": (f"obj-m := {MODULE}.o\n", 0o644),
        f"{src}/{MODULE}.c": (module_source(version), 0o644),
    }


def maintainer_scripts(version: str) -> dict[str, str]:
    """What dh_dkms generates: build and install at configure, remove before removal."""
    return {
        "postinst": (
            "#!/bin/sh\nset -e\n"
            f'if [ "$1" = configure ]; then /usr/lib/dkms/common.postinst {MODULE} {version} '
            '"" "" "$2"; fi\n'
        ),
        "prerm": f"#!/bin/sh\nset -e\ndkms remove -m {MODULE} -v {version} --all || true\n",
    }


def package_files(version: str, package: str = DEFAULT_PACKAGE) -> dict[str, tuple[str, int]]:
    """Every file of the .deb: path -> (content, mode)."""
    control = (
        f"Package: {package}\nVersion: {version}-1\nArchitecture: all\n"
        "Maintainer: autoglm-infra testbed <noreply@example.invalid>\n"
        f"Depends: {DKMS_DEPENDS}\nProvides: nvidia-kernel-dkms-any\n"
        "Section: non-free/kernel\nPriority: optional\n"
        "Description: stand-in NVIDIA kernel module (DKMS source)\n"
        " Builds a module that refuses to load without an NVIDIA GPU, like nvidia.ko.\n"
    )
    files = {"DEBIAN/control": (control, 0o644)}
    files.update(
        {f"DEBIAN/{name}": (body, 0o755) for name, body in maintainer_scripts(version).items()}
    )
    files.update({path.lstrip("/"): entry for path, entry in source_files(version).items()})
    return files


def build_dkms_deb(out_dir: Path, version: str, package: str = DEFAULT_PACKAGE) -> Path:
    """Write <package>_<version>-1_all.deb into out_dir (dpkg-deb, root-owned files)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    deb = out_dir / f"{package}_{version}-1_all.deb"
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "pkg"
        for rel, (content, mode) in package_files(version, package).items():
            target = root / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)
        subprocess.run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(root), str(deb)],
            check=True, capture_output=True, text=True,
        )  # fmt: skip
    return deb
