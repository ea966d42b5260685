"""Private keys: which algorithms HyperMesh issues certificates for, and how they are made.

The cluster's own CAs and certificates use ECDSA P-256 (small certificates, fast handshakes,
spoken by every TLS stack). Certificates issued for workloads (the Certificate kind) may ask for
another key, as cert-manager allows: ECDSA on P-256, P-384 or P-521, Ed25519, or RSA of 2048,
3072 or 4096 bits. Other RSA sizes are refused rather than rounded: below 2048 bits is unsafe,
and above 4096 costs seconds per key for no security anyone asks for.

A `KeySpec` is the validated form of what a user asked for; `KeySpec.parse` is where a bad
request gets its precise message. Keys are stored as unencrypted PKCS#8 PEM, which Go,
OpenSSL and Python all read.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

KeyAlgorithm = Literal["ECDSA", "Ed25519", "RSA"]
PrivateKey = ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
PublicKey = ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | rsa.RSAPublicKey

ALGORITHMS: tuple[KeyAlgorithm, ...] = ("ECDSA", "Ed25519", "RSA")
_CURVES: dict[int, type[ec.EllipticCurve]] = {
    256: ec.SECP256R1,
    384: ec.SECP384R1,
    521: ec.SECP521R1,
}
RSA_SIZES = (2048, 3072, 4096)
ECDSA_SIZES = tuple(_CURVES)
DEFAULT_SIZES: dict[KeyAlgorithm, int] = {"ECDSA": 256, "RSA": 2048, "Ed25519": 0}


class KeySpecError(ValueError):
    """A requested key algorithm or size that HyperMesh does not issue."""


@dataclass(frozen=True)
class KeySpec:
    """An algorithm and a size (bits for RSA, curve bits for ECDSA, 0 for Ed25519)."""

    algorithm: KeyAlgorithm = "ECDSA"
    size: int = 256

    @classmethod
    def parse(cls, algorithm: str | None, size: int | None) -> KeySpec:
        """Validate a request (None or 0 means the algorithm's default size)."""
        name = algorithm or "ECDSA"
        if name not in ALGORITHMS:
            raise KeySpecError(
                f"algorithm {name!r} is not supported: use one of {', '.join(ALGORITHMS)}"
            )
        chosen: KeyAlgorithm = name  # type: ignore[assignment]
        if not size:
            return cls(chosen, DEFAULT_SIZES[chosen])
        if chosen == "Ed25519":
            # cert-manager ignores the size of Ed25519 keys (there is only one); so do we.
            return cls("Ed25519", 0)
        allowed = ECDSA_SIZES if chosen == "ECDSA" else RSA_SIZES
        if size not in allowed:
            raise KeySpecError(
                f"size {size} is not supported for {chosen} keys: "
                f"use one of {', '.join(str(s) for s in allowed)}"
            )
        return cls(chosen, size)

    def __str__(self) -> str:
        return self.algorithm if self.algorithm == "Ed25519" else f"{self.algorithm} {self.size}"


def generate(spec: KeySpec | None = None) -> PrivateKey:
    """A new private key of `spec` (ECDSA P-256 by default)."""
    spec = spec or KeySpec()
    if spec.algorithm == "ECDSA":
        return ec.generate_private_key(_CURVES[spec.size]())
    if spec.algorithm == "Ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return rsa.generate_private_key(public_exponent=65537, key_size=spec.size)


def spec_of(key: PrivateKey | PublicKey) -> KeySpec:
    """The algorithm and size of an existing key."""
    if isinstance(key, ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey):
        return KeySpec("ECDSA", key.curve.key_size)
    if isinstance(key, ed25519.Ed25519PrivateKey | ed25519.Ed25519PublicKey):
        return KeySpec("Ed25519", 0)
    return KeySpec("RSA", key.key_size)


def to_pem(key: PrivateKey) -> bytes:
    """Serialize a private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def load_pem(data: bytes, *, source: str = "key") -> PrivateKey:
    """Parse a PEM private key of a supported algorithm; ValueError names `source` otherwise."""
    try:
        key = serialization.load_pem_private_key(data, None)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{source}: not a readable unencrypted PEM private key ({exc})") from None
    if not isinstance(
        key, ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey
    ):
        raise ValueError(f"{source}: {type(key).__name__} keys are not supported")
    return key


SignatureHash = hashes.SHA256 | hashes.SHA384 | hashes.SHA512


def signature_hash(key: PrivateKey) -> SignatureHash | None:
    """The digest a CA key signs with: matched to the curve's strength; None for Ed25519,
    which hashes internally and must be given none."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    if isinstance(key, ec.EllipticCurvePrivateKey):
        if key.curve.key_size >= 521:
            return hashes.SHA512()
        if key.curve.key_size >= 384:
            return hashes.SHA384()
    return hashes.SHA256()
