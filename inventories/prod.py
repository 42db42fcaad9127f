"""Example production inventory: copy it, put your hosts in, run

    pyinfra inventories/prod.py deploys/full.py            # converge every host
    pyinfra inventories/prod.py deploys/full.py --dry --diff   # preview, change nothing

Every top-level list (or (hosts, group_data) tuple) is a pyinfra group. Settings for all
hosts live in group_data/all.py; per-group settings in group_data/<group>.py (e.g.
group_data/gpu_servers.py); per-host settings in the host's dict below. README
"Configuration" lists every key.
"""

# Hosts that serve the model. Connect as a sudo-capable user with a key.
gpu_servers = (
    [
        # A host serving from a venv under systemd (the default serve_mode).
        ("gpu-01.example.internal", {"serve_mode": "venv"}),
        # A host serving from the vLLM container, on two GPUs of a larger box.
        ("gpu-02.example.internal", {"serve_mode": "docker"}),
    ],
    {
        "ssh_user": "deploy",
        "_sudo": True,
        # Refuse unknown host keys in production; add them to known_hosts first.
        "ssh_strict_host_key_checking": "yes",
    },
)
