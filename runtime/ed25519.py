"""Ed25519 key pairs in OpenSSH's formats, made in-process (no ``ssh-keygen`` to start).

Used for the per-node host key of a job's sshd (docs/sshd.md).  Key generation only:
the public key is the base point multiplied by the clamped hash of a random seed
(RFC 8032, section 5.1.5).  Nothing here signs or verifies; OpenSSH does that.
tests/unit/test_sshd.py checks the result against ``ssh-keygen -y``.
"""

from __future__ import annotations

import base64
import os
import struct

try:  # the C module alone: hashlib loads OpenSSL, ~5 ms of an image job's prolog
    from _sha512 import sha512 as _sha512
except ImportError:  # pragma: no cover - a Python built without it
    from hashlib import sha512 as _sha512

_P = 2**255 - 19
_D = -121665 * pow(121666, _P - 2, _P) % _P
_SQRT_M1 = pow(2, (_P - 1) // 4, _P)
KEY_TYPE = b"ssh-ed25519"


def _recover_x(y: int, sign: int) -> int:
    x2 = (y * y - 1) * pow(_D * y * y + 1, _P - 2, _P) % _P
    x = pow(x2, (_P + 3) // 8, _P)
    if (x * x - x2) % _P:
        x = x * _SQRT_M1 % _P
    if (x & 1) != sign:
        x = _P - x
    return x


_BY = 4 * pow(5, _P - 2, _P) % _P
_BX = _recover_x(_BY, 0)
_BASE = (_BX, _BY, 1, _BX * _BY % _P)


def _add(p, q):
    x1, y1, z1, t1 = p
    x2, y2, z2, t2 = q
    a = (y1 - x1) * (y2 - x2) % _P
    b = (y1 + x1) * (y2 + x2) % _P
    c = t1 * 2 * _D * t2 % _P
    d = z1 * 2 * z2 % _P
    e, f, g, h = b - a, d - c, d + c, b + a
    return (e * f % _P, g * h % _P, f * g % _P, e * h % _P)


def _mul(s: int, p):
    q = (0, 1, 1, 0)
    while s:
        if s & 1:
            q = _add(q, p)
        p = _add(p, p)
        s >>= 1
    return q


def public_key(seed: bytes) -> bytes:
    """The 32-byte public key of a 32-byte private seed."""
    if len(seed) != 32:
        raise ValueError("an ed25519 seed is 32 bytes")
    h = _sha512(seed).digest()
    a = int.from_bytes(h[:32], "little")
    a &= (1 << 254) - 8
    a |= 1 << 254
    x, y, z, _ = _mul(a, _BASE)
    zi = pow(z, _P - 2, _P)
    x, y = x * zi % _P, y * zi % _P
    return (y | ((x & 1) << 255)).to_bytes(32, "little")


def _string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def public_blob(pub: bytes) -> bytes:
    return _string(KEY_TYPE) + _string(pub)


def public_line(pub: bytes, comment: str = "") -> str:
    """``ssh-ed25519 AAAA... comment`` (an authorized_keys / .pub line, with newline)."""
    text = f"ssh-ed25519 {base64.b64encode(public_blob(pub)).decode()}"
    return f"{text} {comment}\n" if comment else text + "\n"


def private_pem(seed: bytes, pub: bytes, comment: str = "") -> bytes:
    """The unencrypted ``openssh-key-v1`` private key file."""
    check = os.urandom(4)
    private = (check + check + _string(KEY_TYPE) + _string(pub) + _string(seed + pub)
               + _string(comment.encode()))
    private += bytes(range(1, 1 + (-len(private)) % 8))
    blob = (b"openssh-key-v1\0" + _string(b"none") + _string(b"none") + _string(b"")
            + struct.pack(">I", 1) + _string(public_blob(pub)) + _string(private))
    text = base64.b64encode(blob).decode()
    lines = [text[i:i + 70] for i in range(0, len(text), 70)]
    return ("-----BEGIN OPENSSH PRIVATE KEY-----\n" + "\n".join(lines)
            + "\n-----END OPENSSH PRIVATE KEY-----\n").encode()


def generate(comment: str = "") -> tuple[bytes, str]:
    """A new key pair: (private key file, public key line)."""
    seed = os.urandom(32)
    pub = public_key(seed)
    return private_pem(seed, pub, comment), public_line(pub, comment)
