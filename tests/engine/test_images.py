import numpy as np
import pytest
from PIL import Image

from engine.images import ImageReadError, content_hash, image_size, load_rgb


def _save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def test_grey_cmyk_palette_rgba_become_rgb(tmp_path):
    base = Image.fromarray((np.arange(40 * 30 * 3) % 255).astype(np.uint8).reshape(30, 40, 3))
    cases = {
        "grey.png": base.convert("L"),
        "cmyk.jpg": base.convert("CMYK"),
        "palette.png": base.convert("P"),
        "rgba.png": base.convert("RGBA"),
        "bw.bmp": base.convert("1"),
    }
    for name, img in cases.items():
        arr = load_rgb(_save(tmp_path, name, img))
        assert arr.shape == (30, 40, 3) and arr.dtype == np.uint8, name


def test_transparent_pixels_are_composited_on_white(tmp_path):
    img = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    assert (load_rgb(_save(tmp_path, "t.png", img)) == 255).all()


def test_16_bit_image_is_scaled_to_8_bit(tmp_path):
    arr16 = np.full((10, 12), 65535, dtype=np.uint16)
    arr16[:, :6] = 0
    rgb = load_rgb(_save(tmp_path, "deep.png", Image.fromarray(arr16)))
    assert rgb[0, 0, 0] == 0 and rgb[0, 11, 0] == 255


def test_exif_rotation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = _save(tmp_path, "rot.jpg", img, exif=exif)
    assert load_rgb(path).shape == (40, 20, 3)
    assert image_size(path) == (20, 40)


def test_max_side_downscales(tmp_path):
    path = _save(tmp_path, "big.jpg", Image.new("RGB", (1200, 600)))
    assert max(load_rgb(path, max_side=300).shape[:2]) == 300


@pytest.mark.parametrize("content", [b"", b"not an image at all", b"\xff\xd8\xff\xe0" + b"\x00" * 20])
def test_unreadable_files_name_the_file(tmp_path, content):
    path = tmp_path / "broken.jpg"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match="broken.jpg"):
        load_rgb(path)


def test_truncated_jpeg_is_reported(tmp_path):
    good = _save(tmp_path, "full.jpg", Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ImageReadError, match="cut.jpg"):
        load_rgb(cut)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="not found"):
        load_rgb(tmp_path / "nope.png")


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = _save(tmp_path, "huge.png", Image.new("L", (300, 300)))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ImageReadError, match="huge.png"):
        load_rgb(path)


def test_content_hash_is_sha256_of_bytes(tmp_path):
    import hashlib

    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert content_hash(path) == hashlib.sha256(b"abc").hexdigest()
