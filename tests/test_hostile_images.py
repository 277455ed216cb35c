"""Images whose header tells one size and whose frames another (issue 18, "GIF bomb").

A GIF's logical screen, an APNG's fcTL frames, a WebP's VP8X canvas and its bitstreams, an
AVIF's `ispe` properties: each declares a size, and a decoder allocates for the largest. The
fetcher checks every one of them against the pixel limit (served by a real loopback server and
fetched by the real Fetcher), and the gallery's thumbnail never decodes past the limit (a child
process, so its peak memory is its own).
"""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from PIL import Image

from downloader.fetch import FetchOutcome
from downloader.fetch.frames import MAX_FRAMES, MAX_STEPS
from downloader.fetch.sniff import SniffError, image_info
from tests.support.fetching import assert_failed, fetch_one, leftovers, make_settings
from tests.support.imageserver import ImageServer, Reply

# -- hostile files, built byte by byte ------------------------------------------------------


def gif(screen: tuple[int, int], frames: list[tuple[int, int, int, int, bytes]]) -> bytes:
    """A GIF89a with a two-colour global table and `frames` (left, top, width, height, image
    data: the LZW code size byte and the sub-blocks)."""
    out = b"GIF89a" + struct.pack("<HH", *screen) + b"\x80\x00\x00" + b"\x00\x00\x00\xff\xff\xff"
    for left, top, width, height, data in frames:
        out += b"," + struct.pack("<HHHH", left, top, width, height) + b"\x00" + data
    return out + b";"


#: LZW data of the smallest kind: code size 2, one sub-block (clear, pixel 0, end), terminator.
TINY_LZW = b"\x02" + b"\x02\x4c\x01" + b"\x00"


def filling_lzw(pixels: int) -> bytes:
    """LZW data (code size 2) that decodes to `pixels` white pixels in few bytes: each code
    names the entry added just before it, so a code yields one pixel more than the last until
    the table is full, then the longest string repeats (no clear code; decoders accept it)."""
    clear, stop, width = 4, 5, 3
    codes = [(clear, 3), (1, 3)]
    produced, length, next_code = 1, 1, 6
    while produced < pixels:
        if next_code < 4096:
            code, length, next_code = next_code, length + 1, next_code + 1
        else:
            code = 4095
        codes.append((code, width))
        produced += length
        if next_code == 1 << width and width < 12:
            width += 1
    codes.append((stop, width))
    acc = bits = 0
    packed = bytearray()
    for code, size in codes:
        acc |= code << bits
        bits += size
        while bits >= 8:
            packed.append(acc & 0xFF)
            acc >>= 8
            bits -= 8
    if bits:
        packed.append(acc)
    blocks = b"".join(
        bytes([len(packed[i : i + 255])]) + packed[i : i + 255] for i in range(0, len(packed), 255)
    )
    return b"\x02" + blocks + b"\x00"


def gif_35_byte_bomb() -> bytes:
    """The issue's file: a 1x1 screen holding one 12000x12000 frame."""
    return gif((1, 1), [(0, 0, 12000, 12000, TINY_LZW)])


def gif_filled_bomb(padding: int = 0) -> bytes:
    """A 1x1 screen holding a 12000x12000 frame whose 144 M pixels all decode (~55 KB);
    `padding` bytes of comment extension first (to make the body spool to a file)."""
    comment = b""
    if padding:
        comment = b"!\xfe" + b"".join(b"\xff" + b"c" * 255 for _ in range(padding // 256)) + b"\0"
    data = gif((1, 1), [(0, 0, 12000, 12000, filling_lzw(12000 * 12000))])
    return data[:19] + comment + data[19:]  # after the header and the global colour table


def png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def apng_with_first_frame(width: int, height: int) -> bytes:
    """A real 10x10 two-frame APNG whose first fcTL then says `width` x `height`."""
    buf = io.BytesIO()
    first, second = Image.new("RGB", (10, 10)), Image.new("RGB", (10, 10), (255, 0, 0))
    first.save(buf, "PNG", save_all=True, append_images=[second])
    data = buf.getvalue()
    at = data.index(b"fcTL") - 4
    length = struct.unpack_from(">I", data, at)[0]
    body = bytearray(data[at + 8 : at + 8 + length])
    struct.pack_into(">II", body, 4, width, height)  # after the sequence number
    return data[:at] + png_chunk(b"fcTL", bytes(body)) + data[at + 12 + length :]


def riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + b"\0" * (len(body) & 1)


def u24(value: int) -> bytes:
    return value.to_bytes(3, "little")


def webp_vp8x(canvas: tuple[int, int], bitstream: tuple[int, int] | None = None) -> bytes:
    """A VP8X WebP with a `canvas` and a real 1x1 lossless bitstream (its header changed to
    say `bitstream` when given)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (9, 9, 9)).save(buf, "WEBP", lossless=True)
    vp8l = bytearray(buf.getvalue()[20:])  # the VP8L payload after RIFF, WEBP and its header
    if bitstream is not None:
        bits = struct.unpack_from("<I", vp8l, 1)[0] & ~((1 << 28) - 1)
        struct.pack_into("<I", vp8l, 1, bits | (bitstream[0] - 1) | (bitstream[1] - 1) << 14)
    vp8x = b"\0" * 4 + u24(canvas[0] - 1) + u24(canvas[1] - 1)
    body = b"WEBP" + riff_chunk(b"VP8X", vp8x) + riff_chunk(b"VP8L", bytes(vp8l))
    return b"RIFF" + struct.pack("<I", len(body)) + body


def webp_animation_with_first_frame_width(width: int) -> bytes:
    """A real 10x10 two-frame animated WebP whose first ANMF frame then says `width` wide."""
    buf = io.BytesIO()
    frames = [Image.new("RGB", (10, 10)), Image.new("RGB", (10, 10), (255, 0, 0))]
    frames[0].save(buf, "WEBP", save_all=True, append_images=frames[1:], lossless=True)
    data = bytearray(buf.getvalue())
    payload = data.index(b"ANMF") + 8
    data[payload + 6 : payload + 9] = u24(width - 1)
    return bytes(data)


def avif_with_a_second_ispe(width: int, height: int) -> bytes:
    """A real 37x23 RGBA AVIF whose alpha item's auxC property is replaced, at the same size,
    by an `ispe` saying `width` x `height` (the primary item still says 37x23)."""
    buf = io.BytesIO()
    Image.new("RGBA", (37, 23), (1, 2, 3, 100)).save(buf, "AVIF")
    data = bytearray(buf.getvalue())
    at = data.index(b"auxC") - 4
    size = struct.unpack_from(">I", data, at)[0]
    box = struct.pack(">I4sIII", size, b"ispe", 0, width, height)
    data[at : at + size] = box + b"\0" * (size - len(box))
    return bytes(data)


def avif_sequence_with_sample_size(width: int, height: int) -> bytes:
    """A real 37x23 two-frame AVIF image sequence whose AV1 sample entry then says
    `width` x `height` (its still image and track header still say 37x23)."""
    buf = io.BytesIO()
    frames = [Image.new("RGB", (37, 23)), Image.new("RGB", (37, 23), (255, 0, 0))]
    frames[0].save(buf, "AVIF", save_all=True, append_images=frames[1:])
    data = bytearray(buf.getvalue())
    entry = data.index(b"av01", data.index(b"stsd")) + 4
    struct.pack_into(">HH", data, entry + 24, width, height)
    return bytes(data)


def fetch_served(image_server: ImageServer, tmp_path: Path, body: bytes, name: str) -> FetchOutcome:
    image_server.add_route(rf"/hostile/{name}", lambda req: Reply(body=body))
    return fetch_one(make_settings(), tmp_path, image_server.url(f"hostile/{name}"))


# -- GIF ------------------------------------------------------------------------------------


def test_the_35_byte_gif_bomb_is_refused_by_the_fetcher(
    image_server: ImageServer, tmp_path: Path
) -> None:
    body = gif_35_byte_bomb()
    assert len(body) == 35
    outcome = fetch_served(image_server, tmp_path, body, "bomb35.gif")
    assert_failed(outcome, "decompression_bomb")
    assert "12000x12000" in (outcome.error or "")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("padding", [0, 300 * 1024], ids=["in-memory", "spooled-to-a-file"])
def test_a_gif_bomb_whose_pixels_all_decode_is_refused_by_the_fetcher(
    image_server: ImageServer, tmp_path: Path, padding: int
) -> None:
    outcome = fetch_served(image_server, tmp_path, gif_filled_bomb(padding), f"full{padding}")
    assert_failed(outcome, "decompression_bomb")
    assert "frame of 12000x12000" in (outcome.error or "")
    assert leftovers(tmp_path) == []


def test_an_honest_multi_frame_gif_passes_with_its_size(
    image_server: ImageServer, tmp_path: Path
) -> None:
    frames = [Image.new("P", (120, 80), i) for i in range(4)]
    frames[1].paste(7, (10, 10, 30, 20))  # frames the encoder stores cropped to their changes
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:], duration=50)
    outcome = fetch_served(image_server, tmp_path, buf.getvalue(), "honest.gif")
    assert outcome.ok, outcome
    assert (outcome.format, outcome.width, outcome.height) == ("gif", 120, 80)


def test_a_frame_larger_than_the_screen_within_the_limit_is_recorded_at_its_true_size() -> None:
    data = gif((10, 10), [(0, 0, 300, 200, filling_lzw(300 * 200))])
    info = image_info(None, data[:64], data)
    with Image.open(io.BytesIO(data)) as im:
        assert (info.width, info.height) == im.size == (300, 200)


def test_junk_between_blocks_does_not_hide_a_frame() -> None:
    # Pillow skips bytes it does not know between blocks and decodes the frame after them.
    honest = gif((1, 1), [(0, 0, 1, 1, TINY_LZW)])
    data = honest[:-1] + b"\x07junk" + b"," + struct.pack("<HHHH", 0, 0, 12000, 12000)
    data += b"\x00" + TINY_LZW + b";"
    with pytest.raises(SniffError) as refused:
        image_info(None, data[:64], data)
    assert refused.value.code == "decompression_bomb"


def test_the_walk_is_bounded_in_blocks_and_frames() -> None:
    one_byte_blocks = gif((1, 1), [(0, 0, 1, 1, b"\x02" + b"\x01\x00" * MAX_STEPS + b"\x00")])
    with pytest.raises(SniffError) as refused:
        image_info(None, one_byte_blocks[:64], one_byte_blocks)
    assert "too many to check" in refused.value.message

    many = gif((1, 1), [(0, 0, 1, 1, b"\x02\x00")] * (MAX_FRAMES + 1))
    with pytest.raises(SniffError) as refused:
        image_info(None, many[:64], many)
    assert f"more than {MAX_FRAMES:,} frames" in refused.value.message


# -- APNG, WebP, AVIF -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "code"),
    [((4000, 4000), "not_an_image"), ((10000, 10000), "decompression_bomb")],
    ids=["outside-the-canvas", "over-the-pixel-limit"],
)
def test_an_apng_frame_larger_than_its_canvas_is_refused(
    image_server: ImageServer, tmp_path: Path, size: tuple[int, int], code: str
) -> None:
    outcome = fetch_served(image_server, tmp_path, apng_with_first_frame(*size), code)
    assert_failed(outcome, code)
    assert "animation" in (outcome.error or "")


def test_a_webp_canvas_of_16384_squared_with_a_tiny_bitstream_is_refused(
    image_server: ImageServer, tmp_path: Path
) -> None:
    body = webp_vp8x((16384, 16384))
    assert len(body) < 64
    outcome = fetch_served(image_server, tmp_path, body, "canvas.webp")
    assert_failed(outcome, "decompression_bomb")
    assert "16384x16384" in (outcome.error or "")


def test_a_webp_bitstream_larger_than_its_1x1_canvas_is_refused(
    image_server: ImageServer, tmp_path: Path
) -> None:
    outcome = fetch_served(image_server, tmp_path, webp_vp8x((1, 1), (16384, 16384)), "bits")
    assert_failed(outcome, "decompression_bomb")
    assert "bitstream" in (outcome.error or "")


def test_a_webp_animation_frame_outside_its_canvas_is_refused() -> None:
    data = webp_animation_with_first_frame_width(4000)
    with pytest.raises(SniffError) as refused:
        image_info(None, data[:64], data)
    assert refused.value.code == "not_an_image"
    assert "outside its 10x10 canvas" in refused.value.message


def test_an_avif_with_a_huge_ispe_besides_the_primary_one_is_refused(
    image_server: ImageServer, tmp_path: Path
) -> None:
    outcome = fetch_served(image_server, tmp_path, avif_with_a_second_ispe(12000, 12000), "a")
    assert_failed(outcome, "decompression_bomb")
    assert "12000x12000" in (outcome.error or "")


def test_an_avif_sequence_whose_frames_are_larger_than_its_image_is_refused() -> None:
    data = avif_sequence_with_sample_size(12000, 12000)
    with pytest.raises(SniffError) as refused:
        image_info(None, data[:64], data)
    assert refused.value.code == "decompression_bomb"
    assert "12000x12000" in refused.value.message


def test_honest_animations_pass_with_their_size() -> None:
    frames = [Image.new("RGB", (10, 10)), Image.new("RGB", (10, 10), (255, 0, 0))]
    for fmt in ("PNG", "WEBP", "AVIF"):
        buf = io.BytesIO()
        frames[0].save(buf, fmt, save_all=True, append_images=frames[1:])
        data = buf.getvalue()
        info = image_info(None, data[:64], data)
        assert (info.width, info.height) == (10, 10), fmt


# -- thumbnails -----------------------------------------------------------------------------

THUMBNAIL_CHILD = """
import json, resource, sys, time
from pathlib import Path
from downloader.storage.local import LocalStorage
from downloader.ui_queries import thumbnail
from PIL import Image
storage = LocalStorage(sys.argv[1])
storage.put_bytes(Path(sys.argv[2]).read_bytes(), "jobs/j/1/1.gif")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = thumbnail(storage, "jobs/j/1/1.gif")
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
import io
with Image.open(io.BytesIO(out)) as im:
    size = im.size
print(json.dumps({"grew_kb": after - before, "size": size, "bytes": len(out)}))
"""


def test_thumbnail_of_a_stored_gif_bomb_stays_bounded(tmp_path: Path) -> None:
    """A bomb stored before the fetch check (or by any other way in) is not decoded."""
    source = tmp_path / "bomb.gif"
    source.write_bytes(gif_filled_bomb())
    done = subprocess.run(
        [sys.executable, "-c", THUMBNAIL_CHILD, str(tmp_path / "media"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # 144 M pixels decoded would be >= 144 MB; the placeholder needs next to nothing
    assert result["grew_kb"] < 100 * 1024, result
    assert max(result["size"]) <= 320, result


def test_thumbnail_of_an_animated_gif_is_its_first_frame(tmp_path: Path) -> None:
    from downloader.storage.local import LocalStorage
    from downloader.ui_queries import thumbnail

    storage = LocalStorage(tmp_path / "media")
    frames = [Image.new("RGB", (640, 480), (255, 0, 0)), Image.new("RGB", (640, 480), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, "GIF", save_all=True, append_images=frames[1:])
    storage.put_bytes(buf.getvalue(), "jobs/j/1/1.gif")
    with Image.open(io.BytesIO(thumbnail(storage, "jobs/j/1/1.gif"))) as small:
        assert small.size == (320, 240)
        red, _green, blue = small.convert("RGB").getpixel((160, 120))  # type: ignore[misc]
        assert red > 200 and blue < 50


def test_thumbnail_is_made_small_before_the_exif_rotation(tmp_path: Path) -> None:
    from downloader.storage.local import LocalStorage
    from downloader.ui_queries import thumbnail

    storage = LocalStorage(tmp_path / "media")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned by 90 degrees
    buf = io.BytesIO()
    Image.new("RGB", (640, 480), (0, 128, 0)).save(buf, "JPEG", exif=exif.tobytes())
    storage.put_bytes(buf.getvalue(), "jobs/j/1/1.jpg")
    with Image.open(io.BytesIO(thumbnail(storage, "jobs/j/1/1.jpg"))) as small:
        assert small.size == (240, 320)


def test_thumbnail_of_a_file_pillow_cannot_decode_is_a_placeholder(tmp_path: Path) -> None:
    from downloader.storage.local import LocalStorage
    from downloader.ui_queries import thumbnail

    storage = LocalStorage(tmp_path / "media")
    broken = gif((300, 200), [(0, 0, 300, 200, b"\x02\x05garbage\x00")])
    storage.put_bytes(broken, "jobs/j/1/1.gif")
    out = thumbnail(storage, "jobs/j/1/1.gif")
    assert out != broken  # never the stored bytes: st.image would decode them again
    with Image.open(io.BytesIO(out)) as small:
        assert small.format == "PNG" and max(small.size) <= 320
