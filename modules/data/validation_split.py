"""`data.validation_split`: the images of a train concept held out for the validation loss (SPEC §11).

Each image is held out on its own: it is held out when the first 8 bytes of
SHA-256(file name, file content), read as a fraction of 2**64, fall below
`split`. The choice is therefore stable across runs, machines and listing
orders, and an image added to (or removed from) the folder moves no other
image in or out. Two edges keep a small concept usable: a concept of at
least two images whose fractions all lie at or above `split` holds out its
image of the lowest fraction (so a split asked for always gives an image),
and a concept never holds out all its images (the one of the highest
fraction stays). Those two edges are the only places where another image of
the concept changes the choice.

The digests are remembered per process, keyed by (path, modification time,
byte size), so a re-plan in the app reads no file again.
"""

import hashlib
import os

HASH_CHUNK_BYTES = 1 << 20
_digests: dict[tuple[str, int, int], int] = {}


def held_out_fraction(path: str) -> float:
    """The image's fraction in [0, 1): SHA-256 of its file name and its bytes (see the module docstring)."""
    return image_key(path) / 2.0 ** 64


def image_key(path: str) -> int:
    """The first 8 bytes of SHA-256(file name, NUL, file bytes) as an integer: the image's identity for
    the hold-out and the validation noise (seeded by it, so a renamed list order changes nothing)."""
    path = str(path)
    status = os.stat(path)
    key = (path, status.st_mtime_ns, status.st_size)
    cached = _digests.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256(os.path.basename(path).encode("utf-8") + b"\0")
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(HASH_CHUNK_BYTES), b""):
            digest.update(chunk)
    value = int.from_bytes(digest.digest()[:8], "big")
    _digests[key] = value
    return value


def split_files(paths: list[str], split: float) -> tuple[list[int], list[int]]:
    """(indices kept for training, indices held out), each in listing order."""
    if split <= 0 or not paths:
        return list(range(len(paths))), []
    fractions = [held_out_fraction(path) for path in paths]
    held = {index for index, fraction in enumerate(fractions) if fraction < split}
    if not held and len(paths) >= 2:
        held = {min(range(len(paths)), key=fractions.__getitem__)}
    if len(held) == len(paths):
        held.discard(max(range(len(paths)), key=fractions.__getitem__))
    return [index for index in range(len(paths)) if index not in held], sorted(held)
