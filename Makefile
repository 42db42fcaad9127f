# Two commands matter (README): `make demo` and `make test`. Both install what they need.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HOSTS ?= 2
SANDBOX := $(PY) -m autoglm_testbed.hosts
APT_PACKAGES := debootstrap systemd-container iptables zstd openssh-client gnupg dpkg-dev apt-utils vagrant busybox-static apt-cacher-ng openssl curl systemd python3-pip
export DEBIAN_FRONTEND := noninteractive

.PHONY: help deps venv lint typecheck unit integration test test-under-load slow gpu-acceptance demo sandbox sandbox-down vagrant vagrant-boot vagrant-kernel vagrant-driver vagrant-docker vm-secureboot vagrant-deps vagrant-down bench docs clean

help:
	@echo "make demo          converge two throw-away sandbox hosts end to end, twice"
	@echo "make test          lint, type check, unit and sandbox integration tests"
	@echo "make test-under-load   make test with every core kept busy by stress-ng"
	@echo "make sandbox HOSTS=n / make sandbox-down   boot / remove sandbox hosts"
	@echo "make vagrant       a real VM (locally built box), converged twice, rebooted once by the deploy; make vagrant-down"
	@echo "make vagrant-boot  boot a fresh VM, check its kernel, disk and SSH (what CI runs); DEBIAN=13 for trixie"
	@echo "make vagrant-kernel   the DKMS module on the VM's own kernel, a kernel change, a reboot"
	@echo "make vagrant-driver   the NVIDIA stage installs the DKMS driver on the VM and reboots it once"
	@echo "make vagrant-docker   Docker mode under the VM's kernel: AppArmor, seccomp, cgroup v2 OOM, CIS 5, kill -9"
	@echo "make vm-secureboot    the DKMS module refused by a kernel booted with UEFI Secure Boot"
	@echo "make bench         no-op re-run and fan-out benchmarks"
	@echo "make gpu-acceptance   on a GPU host: read-only preflight, gpu_check, torch bench"
	@echo "make docs          regenerate the README variable table and group_data/all.py"

# Host tools (root, Debian 12). The stamp keys on the package list so edits re-run it.
.make/deps-$(shell echo '$(APT_PACKAGES)' | sha1sum | cut -c1-12):
	@mkdir -p .make
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi
	@# npm (for the verdaccio registry stand-in): Debian's nodejs+npm unless a node with npm exists
	@command -v npm >/dev/null || apt-get install -y -q --no-install-recommends nodejs npm
	@touch $@
deps: .make/deps-$(shell echo '$(APT_PACKAGES)' | sha1sum | cut -c1-12)

$(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	@# the testbed is not packaged (users never install it): import it from this checkout
	@echo '$(CURDIR)' > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/autoglm-testbed.pth"
	@rm -f $(VENV)/.installed-*; touch $@
venv: $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m autoglm_infra.config.docs --check

typecheck: venv
	$(VENV)/bin/mypy

unit: venv deps
	$(VENV)/bin/pytest -q -m "not sandbox"

integration: venv deps vagrant-deps
	$(VENV)/bin/pytest -q -m sandbox

# One pytest session, so the sandbox hosts and stand-ins boot once for the whole run.
# vagrant-deps: tests/sandbox/test_vagrant_boot.py boots a VM (README: Vagrant).
test: lint typecheck deps vagrant-deps
	$(VENV)/bin/pytest -q

# The same suite with every core busy (LOAD_IO=1, AUTOGLM_SANDBOX_CPU_QUOTA=50: heavier).
test-under-load:
	scripts/test-under-load

# Outside `make test`: installs the GPU locks (each ~10 GB installed from PyPI, 3-5 min here).
slow: venv
	$(VENV)/bin/pytest -m slow tests/slow

# On a GPU host, as root: read-only preflight, gpu_check (@local) and a torch CUDA bench.
gpu-acceptance: venv
	$(PY) scripts/gpu_acceptance.py $(if $(PYTHON_BENCH),--python $(PYTHON_BENCH))

demo: venv deps
	$(PY) -m autoglm_testbed.demo

sandbox: venv deps
	$(SANDBOX) up --name demo --net 1 --hosts $(HOSTS) --inventory inventories/sandbox.py

sandbox-down: venv
	$(PY) -m autoglm_testbed.demo --down

# The VM scenarios (README "Vagrant"): outside `make test` but for the boot check, see why there.
VAGRANT_PACKAGES := vagrant vagrant-libvirt libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils dnsmasq-base parted ovmf dosfstools mtools
.make/vagrant-deps-$(shell echo '$(VAGRANT_PACKAGES)' | sha1sum | cut -c1-12):
	@mkdir -p .make
	@missing=$$(for p in $(VAGRANT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then echo "installing: $$missing"; apt-get update -q && apt-get install -y -q --no-install-recommends $$missing; fi
	@touch $@
vagrant-deps: .make/vagrant-deps-$(shell echo '$(VAGRANT_PACKAGES)' | sha1sum | cut -c1-12)

vagrant: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.vagrant_driver --deploy full

DEBIAN ?= 12
vagrant-boot: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.vagrant_vm --boot-check --debian $(DEBIAN)

vagrant-kernel: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.vagrant_kernel

vagrant-driver: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.vagrant_driver

vagrant-docker: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.vagrant_docker

vm-secureboot: venv deps vagrant-deps
	$(PY) -m autoglm_testbed.secureboot_vm

vagrant-down: venv
	$(PY) -m autoglm_testbed.vagrant_vm --down

bench: venv deps
	$(PY) bench/noop_rerun.py
	$(PY) bench/fanout.py

docs: venv
	$(PY) -m autoglm_infra.config.docs --write

clean: sandbox-down
	rm -rf .make .pytest_cache .mypy_cache .ruff_cache
