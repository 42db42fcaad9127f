"""Vagrant boxes from ./Vagrantfile, through pyinfra's @vagrant connector.

    vagrant up            # or: vagrant up debian12
    pyinfra inventories/vagrant.py deploys/full.py

The boxes have no GPU unless you configure passthrough (see Vagrantfile), so they join
the `vagrant` group whose group_data/vagrant.py settings suit GPU-less runs.
"""

# "@vagrant" alone would target every running box; name them so groups stay explicit.
vagrant = ["@vagrant/ubuntu2204", "@vagrant/ubuntu2404", "@vagrant/debian12"]
