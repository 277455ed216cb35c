"""Near-duplicates within a product: the same picture at another size or in another format.

With `VERIFY_IMAGES=full` every image is decoded and hashed (a 64-bit dHash of a small
greyscale thumbnail, downloader/fetch/verify.py) and the hash is kept in `image.dhash`. When a
product settles (settling.py), two of its done images whose hashes differ in at most
MAX_DISTANCE of 64 bits and whose shapes agree are one picture: the smaller copy (fewer pixels;
on a tie the later position) becomes `duplicate` of the larger, so the product's ZIP holds
each picture once.

Why at most 6 bits: one picture saved at 480 px as PNG and at 120 px as JPEG hashes within 6
bits (resampling and JPEG noise flip the bits of nearly-flat neighbours), while different
pictures differ in about half of the 64 bits; 6 is under a tenth of the hash, the usual
margin for dHash "same picture" matching. Product photos of one pose in two colours can still
hash alike (dHash reads brightness edges, not colour), so a copy must also keep the larger
one's shape (aspect ratio within ASPECT_TOLERANCE): resizing keeps it, a crop does not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

#: Most differing bits of two hashes of one picture (of 64).
MAX_DISTANCE = 6
#: Most relative difference of the two copies' width/height ratios.
ASPECT_TOLERANCE = 0.02

_BIT64 = 1 << 64
_SIGN = 1 << 63
_MASK = _BIT64 - 1


def signed64(value: int) -> int:
    """The unsigned 64-bit `value` as the signed integer a PostgreSQL BIGINT holds (two's
    complement: the same 64 bits, so XOR and bit counts need no conversion back)."""
    return value - _BIT64 if value >= _SIGN else value


def unsigned64(value: int) -> int:
    """The hash `signed64` stored, back as 0 .. 2**64 - 1."""
    return value & _MASK


def distance(a: int, b: int) -> int:
    """Differing bits of two stored (signed or unsigned) 64-bit hashes."""
    return ((a ^ b) & _MASK).bit_count()


@dataclass(frozen=True, slots=True)
class Candidate:
    """A done image of one product, as settling reads it."""

    image_id: int
    position: int
    width: int
    height: int
    dhash: int


def find(images: Sequence[Candidate]) -> list[tuple[int, int, str]]:
    """(duplicate image id, original image id, reason) for the near-copies among one product's
    done images; the largest copy of each picture is the original."""
    kept: list[Candidate] = []
    found: list[tuple[int, int, str]] = []
    # largest first; on a tie in pixels the earlier position is kept
    for image in sorted(images, key=lambda i: (-(i.width * i.height), i.position)):
        original = next((k for k in kept if _same_picture(k, image)), None)
        if original is None:
            kept.append(image)
            continue
        size = (
            "at a smaller size"
            if image.width * image.height < original.width * original.height
            else "at the same size"
        )
        found.append(
            (
                image.image_id,
                original.image_id,
                f"The same picture as position {original.position} {size} (near-duplicate).",
            )
        )
    return found


def _same_picture(a: Candidate, b: Candidate) -> bool:
    if distance(a.dhash, b.dhash) > MAX_DISTANCE:
        return False
    if min(a.width, a.height, b.width, b.height) <= 0:
        return False
    ratio_a, ratio_b = a.width / a.height, b.width / b.height
    return abs(ratio_a - ratio_b) <= ASPECT_TOLERANCE * max(ratio_a, ratio_b)
