"""Photo preprocessing: loading edge cases, face detection, head crop, matting, batches, huge images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import skimage.data
from PIL import Image, ImageOps

from perchead.geometry import input_camera
from perchead.preprocess import (
    ImageLoadError,
    NoFaceError,
    PreprocessConfig,
    load_image,
    open_image,
    preprocess_batch,
    preprocess_image,
)
from perchead.preprocess.detect import detect_faces
from perchead.preprocess.io import oriented_to_raw_box
from perchead.preprocess.matting import refine_mask

# Measured by eye on skimage.data.astronaut() (512x512): top of the hair, top of the forehead's skin under the
# fringe (x = 225), chin, eye line.
ASTRONAUT_HAIR_TOP_Y = 15
ASTRONAUT_HAIRLINE_Y = 70
ASTRONAUT_CHIN_Y = 177
ASTRONAUT_FACE_CENTRE_X = 225


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def astronaut_result(astronaut):
    return preprocess_image(astronaut)


def _face_centre_in_crop(result):
    fx0, fy0, fx1, fy1 = result.face_box
    x0, y0, x1, _ = result.crop_box
    k = result.image.shape[1] / (x1 - x0)
    return ((fx0 + fx1) / 2 - x0) * k, ((fy0 + fy1) / 2 - y0) * k, k


# ----------------------------------------------------------------------------------------------- framing
def test_crop_reproduces_the_input_camera_framing():
    """The crop constants agree with the template head and the input camera they are derived from."""
    from perchead.geometry import HEAD_CAMERA_RADIUS, input_camera, project_points
    from perchead.geometry.head_surface import HeadShape
    from perchead.preprocess import crop

    shape = HeadShape()
    assert crop.TEMPLATE_EYE_DISTANCE_M == pytest.approx(2 * shape.eye_spacing)
    assert crop.TEMPLATE_EYE_TO_MOUTH_M == pytest.approx(shape.eye_height - shape.mouth_height)
    assert crop.TEMPLATE_EYE_DEPTH_M < shape.depth_front < HEAD_CAMERA_RADIUS
    # Project the template's eyes and mouth with the input camera: the preprocessing crop of that very
    # picture must be the whole frame (centre on the eye midpoint, side from s).
    import torch

    z = crop.TEMPLATE_EYE_DEPTH_M
    pts = torch.tensor([[-shape.eye_spacing, shape.eye_height, z], [shape.eye_spacing, shape.eye_height, z],
                        [0.0, shape.mouth_height, z]])
    cam = input_camera(512)
    uv = project_points(pts, cam.viewmats[0], cam.Ks[0])[0].numpy().astype(np.float64)
    head = crop.head_geometry(uv[0], uv[1], uv[2])
    assert np.allclose(head.centre, [256, 256], atol=0.5)
    assert 1.65 * head.height == pytest.approx(512, rel=0.005)


# ----------------------------------------------------------------------------------------------- astronaut
def test_astronaut_gives_centred_head_crop(astronaut_result):
    r = astronaut_result
    assert r.image.shape == (512, 512, 3) and r.image.dtype == np.uint8
    assert r.crop.shape == (512, 512, 3) and r.mask.shape == (512, 512) and r.mask.dtype == np.float32
    assert r.num_faces == 1 and r.detector.startswith("mediapipe")
    cx, cy, _ = _face_centre_in_crop(r)
    assert abs(cx - 256) < 0.1 * 512, f"face centre x {cx:.0f} is not near the crop centre"
    assert abs(cy - 256) < 0.2 * 512
    # The head box ends at the chin and reaches into the (voluminous) hair; the crop is 1.65x the head box
    # and holds the whole head with a margin above the hair and below the chin.
    # Face Mesh landmarks move between CPUs (TFLite kernels), so each bound leaves >= 2x the measured error.
    hx0, hy0, hx1, hy1 = r.head_box
    assert abs(hy1 - ASTRONAUT_CHIN_Y) < 12  # measured 0.7 px (16x)
    # The head box's top is a proportion of the face (eyes to mouth), so it lands inside the hair, not on its
    # top: asserted as lying in the hair, a band 10 px above the hair's top to the hairline; measured 28.3 px,
    # 3.5x inside the band's half-width from its centre (the old |hy0 - hair top| < 20 had 13.3 px: 1.5x).
    assert ASTRONAUT_HAIR_TOP_Y - 10 < hy0 < ASTRONAUT_HAIRLINE_Y
    assert abs((hx0 + hx1) / 2 - ASTRONAUT_FACE_CENTRE_X) < 10  # measured 0.03 px
    side = r.crop_box[2] - r.crop_box[0]
    assert side == pytest.approx(1.65 * (hy1 - hy0), rel=1e-6)
    # The crop leaves room above the hair and below the chin. Its size is exact (the 1.65 above), so this tests
    # where the detector put it; 5% of the side (12 px here) is room to spare without the 2x margin being
    # eaten: measured 14.2% above the hair, 19.4% below the chin (2.8x, 3.9x; the old 10% left 1.4x).
    assert r.crop_box[1] < ASTRONAUT_HAIR_TOP_Y - 0.05 * side and r.crop_box[3] > ASTRONAUT_CHIN_Y + 0.05 * side
    cam = input_camera(512)
    assert np.allclose(r.camera.Ks.numpy(), cam.Ks.numpy()) and r.camera.width == 512


def test_a_tilted_head_comes_out_upright(astronaut):
    """The crop levels the eyes (FFHQ's alignment): the network and the fit only know upright heads."""
    from perchead.preprocess.crop import eye_roll_deg

    assert eye_roll_deg((0, 0), (10, 0)) == 0.0 and eye_roll_deg((0, 0), (10, 10)) == pytest.approx(45.0)
    upright = preprocess_image(astronaut)
    tilted = preprocess_image(np.asarray(Image.fromarray(astronaut).rotate(-20, resample=Image.Resampling.BICUBIC)))
    # Turning the photo 20 degrees clockwise tilts the eye line by as much (measured 20.2 more than upright's).
    assert tilted.roll_deg - upright.roll_deg == pytest.approx(20.0, abs=3.0)
    assert tilted.metadata()["roll_deg"] == pytest.approx(tilted.roll_deg, abs=1e-3)
    faces, _ = detect_faces(tilted.crop)
    level = eye_roll_deg(faces[0].right_eye, faces[0].left_eye)
    # The crop's own eye line by the coarser detector (measured -1.5; on the upright crop -1.2): level within 5.
    assert abs(level) < 5.0, level
    assert float(tilted.mask.mean()) == pytest.approx(float(upright.mask.mean()), abs=0.05)
    off = preprocess_image(astronaut, level_eyes=False)
    assert off.roll_deg == 0.0


def test_astronaut_mask_is_clean(astronaut_result):
    r = astronaut_result
    m = r.mask
    assert m.min() >= 0.0 and m.max() <= 1.0
    cx, cy, k = _face_centre_in_crop(r)
    fx0, fy0, fx1, fy1 = ((np.array(r.face_box) - np.array(r.crop_box[:2] * 2)) * k).astype(int)
    assert m[fy0:fy1, fx0:fx1].mean() > 0.85, "the mask must cover the face box (it has some backdrop too)"
    dx, dy = (fx1 - fx0) // 5, (fy1 - fy0) // 5
    assert m[fy0 + dy:fy1 - dy, fx0 + dx:fx1 - dx].min() == 1.0, "the inner face must be fully opaque"
    for corner in (m[:48, :48], m[:48, -48:]):  # backdrop above the shoulders on both sides
        assert corner.max() == 0.0
    soft = ((m > 0.05) & (m < 0.95)).mean()
    assert soft < 0.03, f"{soft:.1%} of the mask is neither background nor foreground"
    # Matted on white where the mask is 0, the photo where it is 1.
    assert (r.image[m == 0] == 255).all()
    assert np.array_equal(r.image[m == 1], r.crop[m == 1])
    # One connected foreground blob: no stray islands (flag, shuttle).
    from scipy import ndimage

    assert ndimage.label(m >= 0.5)[1] == 1


def test_cameraman_is_also_found():
    r = preprocess_image(np.stack([skimage.data.camera()] * 3, -1))
    assert r.num_faces == 1
    cx, _, _ = _face_centre_in_crop(r)
    assert abs(cx - 256) < 0.1 * 512


# ------------------------------------------------------------------------------------------- input formats
def test_exif_orientation_is_applied(tmp_path, astronaut):
    upright = Image.fromarray(astronaut)
    # Orientation 6 = "rotate 90 degrees clockwise to display": store the picture turned counter-clockwise.
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    upright.transpose(Image.Transpose.ROTATE_90).save(path, exif=exif, quality=95)
    loaded = load_image(path)
    assert loaded.shape == astronaut.shape
    assert np.abs(loaded.astype(int) - astronaut).mean() < 4
    r = preprocess_image(path)
    ref = preprocess_image(astronaut)
    assert np.allclose(r.crop_box, ref.crop_box, atol=3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_region_matches_exif_transpose(tmp_path, orientation):
    raw = np.random.default_rng(orientation).integers(0, 256, (7, 11, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"
    Image.fromarray(raw).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)))
    src = open_image(path)
    assert src.size == (expected.shape[1], expected.shape[0])
    box = (1, 2, 4, 6)
    pixels, used = src.region(box, 4)
    assert used == box and np.array_equal(pixels, expected[2:6, 1:4])
    assert np.array_equal(src.thumbnail(64)[0], expected)
    assert oriented_to_raw_box((0, 0, *src.size), orientation, (11, 7)) == (0, 0, 11, 7)


def test_grayscale_input(tmp_path, astronaut):
    path = tmp_path / "gray.png"
    Image.fromarray(astronaut).convert("L").save(path)
    r = preprocess_image(path)
    assert r.num_faces == 1 and r.crop.shape == (512, 512, 3)
    assert np.array_equal(r.crop[..., 0], r.crop[..., 1]) and np.array_equal(r.crop[..., 1], r.crop[..., 2])


def test_16bit_inputs_are_scaled_not_clipped(tmp_path):
    import cv2

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    Image.fromarray(ramp).save(tmp_path / "g16.tif")
    expected = np.round(ramp / 257.0)
    for name in ("g16.png", "g16.tif"):
        got = load_image(tmp_path / name)
        assert got.shape == (64, 64, 3) and np.abs(got[..., 0] - expected).max() <= 1, name
    rgb16 = np.stack([ramp, 65535 - ramp, ramp // 2], -1)
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    got = load_image(tmp_path / "rgb16.png").astype(float)
    assert np.abs(got - rgb16 / 257.0).max() <= 1.5
    assert np.abs(load_image(rgb16)[..., :3] - rgb16 / 257.0).max() <= 1  # uint16 arrays too


def test_rgba_alpha_is_used_as_the_mask(tmp_path, astronaut):
    h, w = astronaut.shape[:2]
    yy, xx = np.mgrid[:h, :w]
    disk = ((xx - 225) ** 2 + (yy - 110) ** 2 < 95**2).astype(np.uint8) * 255
    rgba = np.dstack([astronaut, disk])
    rgba[disk == 0, :3] = 0  # what editors leave under full transparency: must not disturb detection
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba).save(path)
    r = preprocess_image(path)
    assert r.num_faces == 1
    assert r.mask[:40].max() == 0.0 and r.mask[256, 256] == 1.0
    assert (r.image[r.mask == 0] == 255).all()
    # use_alpha="ignore" runs the segmenter instead: the shoulders (outside the disk) come back.
    seg = preprocess_image(path, use_alpha="ignore")
    assert seg.mask[-20:].mean() > r.mask[-20:].mean() + 0.2


def test_palette_cmyk_float_inputs(tmp_path, astronaut):
    Image.fromarray(astronaut).quantize(256).save(tmp_path / "p.png")
    Image.fromarray(astronaut).convert("CMYK").save(tmp_path / "cmyk.jpg", quality=95)
    Image.fromarray(astronaut).save(tmp_path / "a.webp", quality=90)
    Image.fromarray(astronaut).save(tmp_path / "a.bmp")
    for name in ("p.png", "cmyk.jpg", "a.webp", "a.bmp"):
        got = load_image(tmp_path / name)
        assert got.shape == (512, 512, 3), name
        assert np.abs(got.astype(int) - astronaut).mean() < 12, name
    floats = load_image(astronaut.astype(np.float32) / 255.0)
    assert np.abs(floats.astype(int) - astronaut).max() <= 1


# -------------------------------------------------------------------------------------------- bad inputs
@pytest.fixture()
def bad_files(tmp_path, astronaut):
    Image.fromarray(astronaut).save(tmp_path / "good.jpg", quality=90)
    data = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "truncated.jpg").write_bytes(data[: len(data) // 2])
    Image.fromarray(astronaut).save(tmp_path / "good.png")
    png = bytearray((tmp_path / "good.png").read_bytes())
    png[200:400] = bytes(200)  # zeroes over compressed pixel data
    (tmp_path / "corrupt.png").write_bytes(bytes(png))
    (tmp_path / "notes.txt").write_text("this is not a picture\n")
    (tmp_path / "notes.jpg").write_text("neither is this, whatever its name says\n")
    return tmp_path


@pytest.mark.parametrize("name, words", [
    ("empty.jpg", "empty"),
    ("truncated.jpg", "truncated"),
    ("corrupt.png", "corrupt"),
    ("notes.txt", "not a recognised image"),
    ("notes.jpg", "not a recognised image"),
])
def test_bad_files_give_clear_errors(bad_files, name, words):
    with pytest.raises(ImageLoadError) as info:
        preprocess_image(bad_files / name)
    assert str(bad_files / name) in str(info.value) and words in str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI turns ValueErrors into one clear line


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such image file"):
        preprocess_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageLoadError, match="is a directory"):
        preprocess_image(tmp_path)


def test_decompression_bomb_is_refused(tmp_path):
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 2, 0, 0, 0)
    path = tmp_path / "bomb.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    with pytest.raises(ImageLoadError, match=r"100000x100000 .* above the limit"):
        open_image(path)


def test_batch_survives_bad_files(bad_files, astronaut):
    names = ["good.jpg", "empty.jpg", "truncated.jpg", "corrupt.png", "notes.txt", "missing.png", "good.png"]
    results, failures = preprocess_batch([bad_files / n for n in names])
    assert [r.source for r in results] == [str(bad_files / "good.jpg"), str(bad_files / "good.png")]
    assert all(r.num_faces == 1 for r in results)
    assert [f[0] for f in failures] == [str(bad_files / n) for n in names[1:6]]
    assert isinstance(failures[-1][1], FileNotFoundError)
    assert all(isinstance(e, ImageLoadError) for _, e in failures[:-1])


def test_cli_writes_outputs_and_reports_failures(bad_files, tmp_path, capsys):
    from perchead.cli import main

    out = tmp_path / "out"
    rc = main(["preprocess", str(bad_files / "good.jpg"), str(bad_files / "empty.jpg"), "--out", str(out),
               "--size", "128"])
    assert rc == 1  # one photo failed
    assert Image.open(out / "good.png").size == (128, 128) and (out / "good.json").exists()
    err = capsys.readouterr().err
    assert "empty.jpg: the file is empty" in err


# ------------------------------------------------------------------------------------------ faces: 0 or 2+
def test_no_face_raises_and_whole_image_option(astronaut):
    coffee = skimage.data.coffee()
    with pytest.raises(NoFaceError, match="no face found.*allow_no_face"):
        preprocess_image(coffee)
    r = preprocess_image(coffee, allow_no_face=True)
    h, w = coffee.shape[:2]
    assert r.detector == "whole-image" and r.num_faces == 0 and r.face_box is None and r.warnings
    assert r.crop_box == ((w - h) / 2, 0.0, (w + h) / 2, float(h))
    assert r.image.shape == (512, 512, 3)
    # A flat picture and a rocket (face-like patches for tiled detection), batch form: failures, no crash.
    flat = np.full((300, 300, 3), 128, np.uint8)
    results, failures = preprocess_batch([flat, skimage.data.rocket(), astronaut])
    assert len(results) == 1 and len(failures) == 2
    assert all(isinstance(e, NoFaceError) for _, e in failures)


def test_several_faces_take_the_largest(astronaut):
    small = 358
    canvas = np.full((512, 512 + small, 3), 200, np.uint8)
    canvas[:, :512] = astronaut
    canvas[:small, 512:] = np.asarray(Image.fromarray(astronaut).resize((small, small), Image.LANCZOS))
    r = preprocess_image(canvas)
    assert r.num_faces == 2
    assert any("2 faces" in w for w in r.warnings)
    fx = (r.face_box[0] + r.face_box[2]) / 2
    assert abs(fx - ASTRONAUT_FACE_CENTRE_X) < 15, "the larger (left) face must be chosen"
    faces, _ = detect_faces(canvas)
    assert faces[0].area > faces[1].area


@pytest.mark.parametrize("detector", ["dlib", "haar"])
def test_fallback_detectors_frame_the_same_head(astronaut, astronaut_result, detector):
    r = preprocess_image(astronaut, detectors=(detector,), refine_landmarks=False)
    assert r.detector == detector and r.num_faces == 1
    ref = np.array(astronaut_result.crop_box)
    side = ref[2] - ref[0]
    assert np.abs(np.array(r.crop_box) - ref).max() < 0.25 * side


def test_dlib_boxes_without_keypoints_are_the_same_faces(astronaut):
    from perchead.preprocess import detect

    detect._dlib_landmarker.cache_clear()
    boxes, name = detect_faces(astronaut, ("dlib",), keypoints=False)
    # the identity metric asks for boxes only: dlib's 68-point model (100 MB, ~0.5 s to load) is not loaded
    assert detect._dlib_landmarker.cache_info().currsize == 0
    full, _ = detect_faces(astronaut, ("dlib",))
    assert name == "dlib" and len(boxes) == len(full) == 1
    np.testing.assert_array_equal(boxes[0].box, full[0].box)
    assert boxes[0].score == full[0].score
    assert np.isnan(boxes[0].right_eye).all() and np.isfinite(full[0].right_eye).all()


# ---------------------------------------------------------------------------------------- pieces, options
def test_refine_mask_keeps_the_face_component_and_fills_holes():
    soft = np.zeros((100, 100), np.float32)
    soft[10:60, 10:60] = 0.9  # the person
    soft[30:35, 30:35] = 0.1  # a hole (open mouth)
    soft[70:95, 70:95] = 0.95  # a bigger stray blob elsewhere... smaller here, but not under the face
    soft[5:100, 90:100] = 0.8
    alpha = refine_mask(soft, face_box=(20, 20, 50, 50))
    assert alpha[32, 32] == 1.0  # hole filled
    assert alpha[80, 80] == 0.0 and alpha[50, 95] == 0.0  # other blobs gone
    assert alpha[40, 40] == 1.0


def test_options_are_validated(astronaut):
    with pytest.raises(TypeError, match="unknown preprocessing option"):
        preprocess_image(astronaut, sise=256)
    with pytest.raises(ValueError, match="unknown face detector"):
        preprocess_image(astronaut, detectors=("yolo",))
    with pytest.raises(ValueError, match="crop_scale"):
        PreprocessConfig(crop_scale=0.5)
    with pytest.raises(ValueError, match="transparent background"):
        preprocess_image(astronaut, matting="alpha")


def test_size_padding_and_save(tmp_path, astronaut):
    r = preprocess_image(astronaut, size=256, pad_mode="constant", background=(0, 255, 0), matting="none")
    assert r.image.shape == (256, 256, 3) and (r.mask == 1).all()
    # The astronaut crop leaves the photo at the top: constant padding fills it with the background colour.
    assert r.crop_box[1] < 0 and (r.crop[:5, 128] == (0, 255, 0)).all()
    assert r.camera.width == 256
    png = r.save(tmp_path, "astro")
    meta = json.loads((tmp_path / "astro.json").read_text())
    assert meta["num_faces"] == 1 and len(meta["K"]) == 3 and Image.open(png).mode == "RGBA"


# ------------------------------------------------------------------------------------------------- huge
HUGE_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    import numpy as np, skimage.data
    from perchead.preprocess import preprocess_image
    preprocess_image(skimage.data.astronaut())  # load every model before measuring
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = preprocess_image(sys.argv[1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"increase_kib": after - before, "crop_box": r.crop_box, "num_faces": r.num_faces,
                      "detector": r.detector,
                      "size": r.original_size, "face_mean": float(r.mask[200:300, 200:300].mean())}))
""")

MAKE_HUGE = textwrap.dedent("""
    import sys, skimage.data
    from PIL import Image
    Image.MAX_IMAGE_PIXELS = None
    im = Image.new("RGB", (20000, 20000), (120, 130, 140))
    im.paste(Image.fromarray(skimage.data.astronaut()).resize((4096, 4096), Image.LANCZOS), (8000, 6000))
    im.save(sys.argv[1], quality=85)
""")


def test_20000px_jpeg_within_2gb(tmp_path):
    path = tmp_path / "huge.jpg"
    subprocess.run([sys.executable, "-c", MAKE_HUGE, str(path)], check=True)
    out = subprocess.run([sys.executable, "-c", HUGE_SCRIPT, str(path)], check=True, capture_output=True,
                         text=True)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["size"] == [20000, 20000] and res["num_faces"] == 1
    assert res["detector"] == "mediapipe-full-tiled"  # the face is ~4% of the side: too small for one pass
    increase_gib = res["increase_kib"] / 2**20  # ru_maxrss is in KiB on Linux
    assert increase_gib < 2.0, f"peak RSS grew by {increase_gib:.2f} GiB"
    # The astronaut was scaled 8x and pasted at (8000, 6000): her eye midpoint is at (225, 102) * 8 + offset.
    x0, y0, x1, y1 = res["crop_box"]
    assert abs((x0 + x1) / 2 - (8000 + 8 * 225)) < 80 and abs((y0 + y1) / 2 - (6000 + 8 * 102)) < 80
    assert res["face_mean"] > 0.9


def test_mediapipe_native_log_lines_are_silenced_unless_verbose():
    """MediaPipe's graphs log from C++ straight to fd 2 ("W0000 ... inference_feedback_manager.cc"); a user sees
    none of it unless they ask with PERCHEAD_VERBOSE=1 (``perchead --verbose``), which shows the test can fail."""
    script = textwrap.dedent("""
        import numpy as np, skimage.data
        from perchead.preprocess import preprocess_image
        from perchead.preprocess.detect import face_mesh_landmarks
        out = preprocess_image(skimage.data.astronaut())
        assert face_mesh_landmarks(np.ascontiguousarray(np.array(out.image))) is not None
        print("done")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PERCHEAD_VERBOSE"}
    quiet = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    loud = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**env, "PERCHEAD_VERBOSE": "1"})
    assert quiet.returncode == 0 and loud.returncode == 0, quiet.stderr + loud.stderr
    assert "done" in quiet.stdout
    assert "W0000" not in quiet.stderr and "XNNPACK" not in quiet.stderr, quiet.stderr
    assert "W0000" in loud.stderr or "XNNPACK" in loud.stderr, loud.stderr


# ------------------------------------------------------------------------------------------ background trim
def _beside_the_face(result, rgb_value, rows=(-40, 40), width=70):
    """The crop and matte of ``result`` with a patch of ``rgb_value`` (+ noise) joined to the matte's left edge
    at the face's height, as a person segmenter keeps a shirt or a wall touching the head; and the patch."""
    rgb, mask = result.crop.copy(), result.mask.copy()
    _, cy, _ = _face_centre_in_crop(result)
    y0, y1 = int(cy) + rows[0], int(cy) + rows[1]
    x_edge = int(min(np.nonzero(mask[y] >= 0.5)[0].min() for y in range(y0, y1)))
    patch = np.zeros(mask.shape, bool)
    patch[y0:y1, x_edge - width:x_edge + 3] = True
    patch &= mask < 0.5
    noise = np.random.default_rng(0).normal(0, 5, (int(patch.sum()), 3))
    rgb[patch] = np.clip(np.asarray(rgb_value, float) + noise, 0, 255).astype(np.uint8)
    mask[patch] = 1.0
    return rgb, mask, patch


def test_trim_takes_out_background_the_segmenter_kept(astronaut_result):
    from perchead.preprocess.detect import face_mesh_landmarks
    from perchead.preprocess.matting import TRIM_MIN_AREA, trim_background

    r = astronaut_result
    background = np.median(r.crop[r.mask < 0.01], axis=0)
    rgb, mask, patch = _beside_the_face(r, background)
    trimmed = trim_background(rgb, mask, face_mesh_landmarks(rgb))
    assert (trimmed <= mask + 1e-6).all(), "the trim never adds to the matte"
    assert trimmed[patch].mean() < 0.2, f"the kept background is still {trimmed[patch].mean():.0%} opaque"
    head = r.mask >= 0.5
    assert trimmed[head].sum() >= 0.97 * r.mask[head].sum(), "the head itself is kept"
    assert trimmed[head].mean() > 0.97
    # a bite under TRIM_MIN_AREA of the crop stays: more often GrabCut's error than background
    rgb, mask, patch = _beside_the_face(r, background, rows=(-12, 12), width=20)
    assert patch.sum() < TRIM_MIN_AREA * mask.size
    assert np.array_equal(trim_background(rgb, mask, face_mesh_landmarks(rgb)), mask)


def test_trim_beside_a_turned_face_only(astronaut_result):
    """A skin-coloured patch joined to the matte beside the cheek at the face's height stays beside a frontal
    face (an ear, a neck) and beside the near cheek of a turned one, and goes beside its far cheek, where only
    background (a wall the colour of skin) can be. The turn is Face Mesh's nose tip moved to one side."""
    from perchead.preprocess.detect import face_mesh_landmarks
    from perchead.preprocess.matting import FAR_SIDE_TURN, trim_background

    r = astronaut_result
    skin = np.median(r.crop[r.mask >= 0.5][r.crop[r.mask >= 0.5][:, 0] > 150], axis=0)
    rgb, mask, patch = _beside_the_face(r, skin)  # on the image's left
    landmarks = face_mesh_landmarks(r.crop)
    middle = (landmarks[:, 0].max() + landmarks[:, 0].min()) / 2
    width = landmarks[:, 0].max() - landmarks[:, 0].min()
    head = r.mask >= 0.5
    for side, kept in ((0.0, True), (-1.0, False), (1.0, True)):
        turned = landmarks.copy()
        turned[1, 0] = middle + side * 1.5 * FAR_SIDE_TURN * width
        trimmed = trim_background(rgb, mask, turned)
        assert (trimmed[patch].mean() > 0.8) if kept else (trimmed[patch].mean() < 0.2), (side, trimmed[patch].mean())
        assert trimmed[head].mean() > 0.97


def test_trim_background_leaves_trivial_mattes_alone():
    from perchead.preprocess.matting import trim_background

    rgb = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    for alpha in (np.zeros((64, 64), np.float32), np.ones((64, 64), np.float32)):
        assert np.array_equal(trim_background(rgb, alpha, None), alpha)


def test_a_clean_matte_is_not_trimmed(astronaut, astronaut_result):
    """The astronaut's matte is her head and suit: the trim (on by default) leaves it as it was, to the pixel."""
    plain = preprocess_image(astronaut, trim_background=False)
    assert np.array_equal(astronaut_result.mask, plain.mask)
    assert np.array_equal(astronaut_result.image, plain.image)
    assert astronaut_result.metadata()["trimmed"] == 0.0
