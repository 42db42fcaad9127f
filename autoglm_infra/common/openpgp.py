"""Read the primary-key fingerprints of an OpenPGP public key (armored or binary).

We only need "which primary keys does this file contain" to decide whether to trust a
repository key before it touches a host. That is a few lines of RFC 9580 packet parsing;
shelling out to gpg would need gpg and a throw-away keyring on the controller, and the
Python OpenPGP libraries are either unmaintained or far larger than this need. Pure.
"""

from __future__ import annotations

import base64
import binascii
import hashlib

PUBLIC_KEY_TAG = 6


class KeyFormatError(ValueError):
    """The bytes are not an OpenPGP public key we can read."""


def dearmor(data: bytes) -> bytes:
    """Binary OpenPGP data from ASCII armor; binary input is returned unchanged."""
    text = data.lstrip()
    if not text.startswith(b"-----BEGIN PGP"):
        return data
    lines = text.decode("ascii", errors="replace").splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if not line.strip() and i > 0)
    except StopIteration:
        raise KeyFormatError("armored key has no blank line after its header") from None
    body = []
    for line in lines[start + 1 :]:
        if line.startswith("-----END PGP"):
            break
        if line.startswith("="):
            continue  # CRC-24 checksum line: optional since RFC 9580
        body.append(line.strip())
    try:
        return base64.b64decode("".join(body), validate=True)
    except binascii.Error as exc:
        raise KeyFormatError(f"armored key is not valid base64: {exc}") from None


def _packets(data: bytes) -> list[tuple[int, bytes]]:
    packets, pos = [], 0
    while pos < len(data):
        head = data[pos]
        if not head & 0x80:
            raise KeyFormatError(f"byte {pos} is not an OpenPGP packet header")
        if head & 0x40:  # new format
            tag, pos = head & 0x3F, pos + 1
            first = data[pos]
            if first < 192:
                length, pos = first, pos + 1
            elif first < 224:
                length, pos = ((first - 192) << 8) + data[pos + 1] + 192, pos + 2
            elif first == 255:
                length, pos = int.from_bytes(data[pos + 1 : pos + 5], "big"), pos + 5
            else:
                raise KeyFormatError("partial body lengths are not allowed in key packets")
        else:  # legacy format
            tag, kind, pos = (head >> 2) & 0x0F, head & 0x03, pos + 1
            if kind == 3:
                raise KeyFormatError("indeterminate packet length")
            size = (1, 2, 4)[kind]
            length, pos = int.from_bytes(data[pos : pos + size], "big"), pos + size
        if pos + length > len(data):
            raise KeyFormatError("truncated packet")
        packets.append((tag, data[pos : pos + length]))
        pos += length
    return packets


def _fingerprint(body: bytes) -> str:
    version = body[0] if body else 0
    if version == 4:
        digest = hashlib.sha1(b"\x99" + len(body).to_bytes(2, "big") + body).hexdigest()
    elif version == 6:
        digest = hashlib.sha256(b"\x9b" + len(body).to_bytes(4, "big") + body).hexdigest()
    else:
        raise KeyFormatError(f"OpenPGP key version {version} is not supported (need 4 or 6)")
    return digest.upper()


def primary_fingerprints(data: bytes) -> list[str]:
    """Upper-case hex fingerprints of every primary public key in `data`."""
    packets = _packets(dearmor(data))
    found = [_fingerprint(body) for tag, body in packets if tag == PUBLIC_KEY_TAG]
    if not found:
        raise KeyFormatError("no OpenPGP public key found")
    return found
