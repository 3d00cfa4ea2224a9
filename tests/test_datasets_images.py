"""read_image: every pixel format becomes 8-bit RGB; broken files fail loudly with their path."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFile

from embedcyto.datasets import open_dataset, read_image
from embedcyto.datasets.fixtures import make_fixture
from embedcyto.errors import DatasetError, ImageReadError


def _rgb_at(img, xy):
    assert img.mode == "RGB"
    return img.getpixel(xy)


def test_grayscale_and_palette(tmp_path):
    Image.new("L", (10, 8), 77).save(tmp_path / "g.png")
    assert _rgb_at(read_image(tmp_path / "g.png"), (3, 3)) == (77, 77, 77)
    pal = Image.new("RGB", (10, 8), (200, 30, 60)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    assert _rgb_at(read_image(tmp_path / "p.png"), (0, 0)) == (200, 30, 60)


def test_alpha_is_composited_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (10, 20, 30, 255))
    rgba.putpixel((0, 0), (0, 0, 0, 0))
    rgba.putpixel((1, 0), (0, 0, 0, 128))
    rgba.save(tmp_path / "a.png")
    img = read_image(tmp_path / "a.png")
    assert img.getpixel((0, 0)) == (255, 255, 255)
    assert all(126 <= v <= 128 for v in img.getpixel((1, 0)))
    assert img.getpixel((2, 2)) == (10, 20, 30)
    la = Image.new("LA", (3, 3), (50, 0))
    la.save(tmp_path / "la.png")
    assert read_image(tmp_path / "la.png").getpixel((1, 1)) == (255, 255, 255)


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (4, 4), 0)
    img.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    img.putpixel((1, 1), 1)
    img.info["transparency"] = 0
    img.save(tmp_path / "pt.png", transparency=0)
    out = read_image(tmp_path / "pt.png")
    assert out.getpixel((0, 0)) == (255, 255, 255) and out.getpixel((1, 1)) == (255, 0, 0)


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    arr = np.array([[0, 257 * 100, 65535, 32896]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    with Image.open(tmp_path / "d.png") as raw:
        assert raw.mode.startswith("I")
    img = read_image(tmp_path / "d.png")
    assert [img.getpixel((x, 0))[0] for x in range(4)] == [0, 100, 255, 128]


def test_float_tiff(tmp_path):
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32)).save(tmp_path / "f.tif")
    img = read_image(tmp_path / "f.tif")
    assert [img.getpixel((x, 0))[0] for x in range(3)] == [0, 128, 255]


def test_cmyk(tmp_path):
    Image.new("CMYK", (6, 6), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    r, g, b = read_image(tmp_path / "c.jpg").getpixel((3, 3))
    assert r > 200 and g < 60 and b < 60


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 10, 10))  # red block at the top-left
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: display needs a 90 degree clockwise turn
    img.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = read_image(tmp_path / "r.jpg")
    assert out.size == (20, 40)
    r, g, b = out.getpixel((15, 4))  # top-left red block is now at the top-right
    assert r > 200 and b < 60


@pytest.mark.parametrize("target", [100, 224, 384, 500, 2000])
def test_draft_keeps_short_side_at_least_target(tmp_path, target):
    path = tmp_path / "big.jpg"
    if not path.exists():
        Image.new("RGB", (2048, 1536), (180, 120, 200)).save(path)
    img = read_image(path, target_size=target)
    assert min(img.size) >= min(target, 1536)
    assert img.size[0] / img.size[1] == pytest.approx(2048 / 1536, rel=0.01)
    if target <= 384:
        assert min(img.size) < 1536  # the decoder did downsample
    assert read_image(path).size == (2048, 1536)


@pytest.mark.parametrize("content, reason", [
    (b"", "not an image"),
    (b"hello, I am text", "not an image"),
])
def test_corrupt_files(tmp_path, content, reason):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError, match=reason) as err:
        read_image(path)
    assert err.value.path == str(path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_files_fail(tmp_path, suffix):
    rng = np.random.default_rng(0)
    good = tmp_path / f"good{suffix}"
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    data = good.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    with pytest.raises(ImageReadError, match="truncated|corrupt") as err:
        read_image(cut)
    assert str(cut) in str(err.value)
    assert read_image(good).size == (64, 64)


def test_missing_file(tmp_path):
    with pytest.raises(ImageReadError, match="file not found"):
        read_image(tmp_path / "nope.png")


def test_verify_images_skip_reports_and_keeps_good_ones(tmp_path):
    root = make_fixture("mlcc", tmp_path / "m", per_class=3)
    bad = sorted((root / "Squamous cell carcinoma").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:200])
    unverified = open_dataset("mlcc", root)
    assert len(unverified.records) == 12 and not unverified.skipped
    ds = open_dataset("mlcc", root, verify_images=True)
    assert len(ds.records) == 11
    assert ds.skipped == [(bad.relative_to(root).as_posix(), ds.skipped[0][1])]
    assert "truncated" in ds.skipped[0][1] or "corrupt" in ds.skipped[0][1]
    with pytest.raises(DatasetError, match="cannot read image .*SCC_1_ \\(1\\).jpg"):
        open_dataset("mlcc", root, verify_images=True, on_bad_image="error")
