"""Settings for GPU-less Vagrant boxes (inventories/vagrant.py puts them in group `vagrant`)."""

# The Vagrant boxes reach the endpoint through port forwarding, so keep it on loopback.
serve_host = "127.0.0.1"
# No GPU: let the resolver choose open modules; nvidia-smi verification reports "no GPU".
nvidia_driver_flavour = "auto"
