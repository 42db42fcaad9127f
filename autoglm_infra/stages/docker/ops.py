"""Operations of the Docker stage: one state fact, and ops that act only on differences."""

from __future__ import annotations

import shlex
from collections.abc import Generator, Sequence
from typing import Any

from pyinfra import host
from pyinfra.api import FileUploadCommand, StringCommand, operation

from autoglm_infra.pyinfra_ext.converge_lock import tie_to_controller
from autoglm_infra.pyinfra_ext.typed_fact import TypedFact
from autoglm_infra.stages.docker import files as df
from autoglm_infra.stages.docker.state import DockerState, parse_docker_state, state_script

_keys: dict[tuple[str, str], bytes] = {}


class DockerStateFact(TypedFact[DockerState]):
    """Files, packages, images, container label, volume, unit state: one remote command."""

    def command(
        self,
        files: Sequence[str],
        package_patterns: Sequence[str],
        read_text: Sequence[str],
        image_refs: Sequence[str],
        container: str,
        volume: str,
        unit: str,
        model_dir: str,
    ) -> str:
        return state_script(
            files, package_patterns, read_text, ["docker"], image_refs,
            container, volume, unit, model_dir,
        )  # fmt: skip

    def process(self, output: list[str]) -> DockerState:
        return parse_docker_state(output)


@operation()
def ensure_image(
    ref: str,
    present_id: str,
    tarball: str | None = None,
    build_command: str | None = None,
    pull_hint: str = "",
) -> Generator[Any, None, None]:
    """Make `ref` present: `docker load` a tarball, build (files.build_command), or pull.

    + ref: image ID (tarball), derived tag (build) or name:tag@sha256 (pull)
    + present_id: what the snapshot found for `ref` ('' when missing)
    + tarball: local image tarball to upload and `docker load` (an image ID ref)
    + build_command: shell that builds a derived tag (files.build_command)
    + pull_hint: printed when the pull fails (image.pull_failure_hint)

    **Example:**

    .. code:: python

        ensure_image(name="image", ref="vllm/vllm-openai:v0.12.0@sha256:...",
                     present_id=state.images[ref], pull_hint=hint)
    """
    if present_id:
        host.noop(f"image {ref} present ({present_id[:19]})")
        return
    q = shlex.quote(ref)
    if tarball is not None:
        remote = f"{df.IMAGE_DIR}/{ref.removeprefix('sha256:')}.tar"
        qr = shlex.quote(remote)
        yield StringCommand(f"mkdir -p {df.IMAGE_DIR} && chmod 700 {df.IMAGE_DIR}")
        yield FileUploadCommand(tarball, remote)
        # docker load checks every layer against the config the image ID hashes
        yield StringCommand(
            tie_to_controller(
                f"docker load --quiet --input {qr} >/dev/null; rc=$?; rm -f {qr}; [ $rc -eq 0 ] "
                f"&& docker image inspect -f '{{{{.Id}}}}' {q} >/dev/null"
            )
        )
    elif build_command is not None:
        yield StringCommand(tie_to_controller(build_command))
    else:
        hint = shlex.quote(pull_hint or f"docker pull {ref} failed")
        pull = f"docker pull --quiet {q} || {{ printf '%s\\n' {hint} >&2; exit 1; }}"
        yield StringCommand(tie_to_controller(pull))


@operation()
def ensure_volume(volume: str, owner: str, current_owner: str | None) -> Generator[Any, None, None]:
    """A named volume whose directory belongs to the container user (cap-drop ALL: no chown).

    + volume: docker volume name
    + owner: 'uid:gid' the container runs as
    + current_owner: 'uid:gid' of the volume's directory now (None: no volume)

    **Example:**

    .. code:: python

        ensure_volume(name="cache", volume="autoglm-cache", owner="2000:2000",
                      current_owner=state.volume_owner)
    """
    if current_owner == owner:
        host.noop(f"volume {volume} owned by {owner}")
        return
    q = shlex.quote(volume)
    if current_owner is None:
        yield StringCommand(f"docker volume create {q} >/dev/null")
    yield StringCommand(
        f"chown {owner} \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q})\" && "
        f"chmod 770 \"$(docker volume inspect -f '{{{{.Mountpoint}}}}' {q})\""
    )


@operation()
def generate_env_file(path: str, exists: bool) -> Generator[Any, None, None]:
    """Create the 0600 env file with a random API key once; never print or pass the key.

    + path: env file on the host
    + exists: the snapshot found it (the key is then kept)

    **Example:**

    .. code:: python

        generate_env_file(name="API key", path="/etc/autoglm/vllm.env", exists=path_exists)
    """
    if exists:
        host.noop(f"{path} exists (API key kept)")
        return
    yield StringCommand(df.generate_env_file_command(path))


@operation()
def generate_file(path: str, exists: bool, command: str) -> Generator[Any, None, None]:
    """Run `command` (which writes `path` and prints nothing secret) unless `path` exists.

    + path: the file `command` writes
    + exists: the snapshot found it
    + command: shell run on the host to make it

    **Example:**

    .. code:: python

        generate_file(name="token", path="/etc/autoglm/x", exists=False,
                      command="make-x > /etc/autoglm/x")
    """
    if exists:
        host.noop(f"{path} exists (kept)")
        return
    yield StringCommand(command)


@operation()
def require_dir(path: str, exists: bool, hint: str) -> Generator[Any, None, None]:
    """Fail with `hint` at run time when `path` is still missing (an earlier stage makes it).

    + path: directory that must exist
    + exists: the snapshot found it
    + hint: what to do when it is missing

    **Example:**

    .. code:: python

        require_dir(name="model", path="/srv/model", exists=state.model_dir_exists,
                    hint="run deploys/model.py first")
    """
    if exists:
        host.noop(f"{path} exists")
        return
    q = shlex.quote(path)
    msg = shlex.quote(f"{path} does not exist: {hint}")
    yield StringCommand(f"test -d {q} || {{ echo {msg} >&2; exit 1; }}")


@operation()
def enable_unit(unit: str, enabled: str) -> Generator[Any, None, None]:
    """Enable a systemd unit unless it already is.

    + unit: unit name
    + enabled: `systemctl is-enabled` from the snapshot

    **Example:**

    .. code:: python

        enable_unit(name="enable", unit="autoglm-docker.service", enabled=state.unit_enabled)
    """
    if enabled == "enabled":
        host.noop(f"{unit} enabled")
        return
    yield StringCommand(f"systemctl enable {shlex.quote(unit)} 2>/dev/null")


@operation()
def restart_unit(unit: str, reason: str) -> Generator[Any, None, None]:
    """(Re)start the unit; blocks on its health gate, so an unhealthy container fails here.

    Gate it with `_if`: the caller restarts only when what the unit runs changed, the
    running container's spec hash differs, or the unit is down.

    + unit: unit name
    + reason: why it restarts (in the failure message)

    **Example:**

    .. code:: python

        restart_unit(name="restart", unit="autoglm-docker.service", reason="image changed",
                     _if=lambda: changed)
    """
    q = shlex.quote(unit)
    hint = shlex.quote(f"{unit} did not become healthy ({reason}); see: journalctl -u {unit}")
    # reset-failed: a crash loop that hit StartLimitBurst refuses a plain start
    yield StringCommand(
        f"systemctl reset-failed {q} 2>/dev/null; systemctl restart {q} || "
        f"{{ echo {hint} >&2; exit 1; }}"
    )
