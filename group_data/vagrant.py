"""Settings for GPU-less Vagrant boxes (inventories/vagrant.py puts them in group `vagrant`)."""

# The Vagrant boxes reach the endpoint through port forwarding, so keep it on loopback.
serve_host = "127.0.0.1"
# No GPU: let the resolver choose open modules; nvidia-smi verification reports "no GPU".
nvidia_driver_flavour = "auto"
# Boxes have no GPU unless AUTOGLM_GPU_PCI passes one through (then override on the host).
nvidia_require_gpu = False
# Boxes get 4 CPUs / 8 GiB (Vagrantfile): below the production minimums on purpose.
preflight_min_cpus = 2
preflight_min_mem_gib = 4
preflight_min_disk_gib = 10
