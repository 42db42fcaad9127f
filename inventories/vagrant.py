"""Vagrant machines from ./Vagrantfile, through pyinfra's @vagrant connector.

    make vagrant                  # builds, boots and converges the `local` machine
    pyinfra inventories/vagrant.py deploys/full.py

`make vagrant` writes the local machine's settings (the stand-in world's URLs, GPU-less
settings) to .vagrant/autoglm-local.json; they are applied as host data here. Public boxes
are named explicitly, after `vagrant up ubuntu2204 debian12`:

    AUTOGLM_VAGRANT_MACHINES=ubuntu2204,debian12 pyinfra inventories/vagrant.py deploys/full.py

All machines join the `vagrant` group (group_data/vagrant.py: settings for GPU-less runs).
"""

import json
import os
from pathlib import Path

_STATE = Path(__file__).resolve().parents[1] / ".vagrant" / "autoglm-local.json"
_MACHINES = [m.strip() for m in os.environ.get("AUTOGLM_VAGRANT_MACHINES", "local").split(",")]


def _host_data(machine: str) -> dict[str, object]:
    if machine == "local" and _STATE.is_file():
        data = json.loads(_STATE.read_text()).get("host_data", {})
        return data if isinstance(data, dict) else {}
    return {"_sudo": True}  # public boxes log in as `vagrant`, like the local one


# "@vagrant" alone would target every running machine; name them so groups stay explicit.
vagrant = [(f"@vagrant/{machine}", _host_data(machine)) for machine in _MACHINES if machine]
