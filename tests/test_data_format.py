"""The dataset format: writing, reading with validation, clear errors for bad files."""

import json

import numpy as np
import pytest
import torch

from perchead.data.format import (
    DatasetFormatError,
    ViewData,
    load_view,
    read_dataset,
    read_image,
    read_subject,
    write_index,
    write_subject,
)
from perchead.geometry import input_camera


def _view(name="00", size=16, seg=True, rgba=True):
    cam = input_camera(size, yaw_deg=10.0)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (size, size, 4 if rgba else 3), dtype=np.uint8)
    return ViewData(name=name, K=cam.Ks[0], world_to_cam=cam.viewmats[0], rgba=img if rgba else None,
                    rgb=None if rgba else img, mask=None if rgba else img[..., 0],
                    segmentation=rng.integers(0, 19, (size, size)).astype(np.uint8) if seg else None,
                    extra={"yaw_deg": 10.0, "face_visible": True})


def _dataset(tmp_path):
    a = write_subject(tmp_path / "subjects" / "a", "a", "studio", "train", [_view("00"), _view("01", rgba=False)])
    b = write_subject(tmp_path / "subjects" / "b", "b", "wild", "test", [_view("00", seg=False)])
    write_index(tmp_path, [a, b], {"note": "test"})
    return tmp_path


def test_round_trip(tmp_path):
    root = _dataset(tmp_path)
    ds = read_dataset(root, check_images=True)
    assert [s.id for s in ds.subjects] == ["a", "b"] and ds.meta == {"note": "test"}
    assert [s.id for s in ds.split("test")] == ["b"]
    v = ds.subjects[0].views[0]
    cam = input_camera(16, yaw_deg=10.0)
    assert torch.allclose(v.K, cam.Ks[0]) and torch.allclose(v.world_to_cam, cam.viewmats[0], atol=1e-6)
    assert v.yaw_deg == 10.0 and v.face_visible is True
    loaded = load_view(v)
    src = _view("00")
    assert torch.equal((loaded.image * 255).round().byte(), torch.from_numpy(src.rgba[..., :3]).permute(2, 0, 1))
    assert torch.equal((loaded.mask[0] * 255).round().byte(), torch.from_numpy(src.rgba[..., 3]))
    assert torch.equal(loaded.segmentation, torch.from_numpy(src.segmentation.astype(np.int64)))
    rgb_view = load_view(ds.subjects[0].views[1])  # RGB + separate mask file
    assert rgb_view.has_mask and rgb_view.mask.shape == (1, 16, 16)
    assert load_view(ds.subjects[1].views[0]).segmentation is None


@pytest.mark.parametrize("edit,match", [
    (lambda c: c["views"][0].pop("K"), r"cameras.json: views\[0\]: missing field 'K'"),
    (lambda c: c["views"][0].__setitem__("K", [[1, 0], [0, 1]]), r"views\[0\].K: must be 3x3"),
    (lambda c: c["views"][0].__setitem__("world_to_cam", np.diag([2.0, 1, 1, 1]).tolist()), "proper rotation"),
    (lambda c: c["views"][0].__setitem__("width", "16"), "field 'width' must be int"),
    (lambda c: c["views"][0].__setitem__("image", "../../x.png"), "must be a path inside"),
    (lambda c: c["views"][0].__setitem__("image", "images/missing.png"), "missing.png not found"),
    (lambda c: c["views"][1].__setitem__("name", "00"), "duplicate view name"),
])
def test_bad_cameras_json_names_file_and_field(tmp_path, edit, match):
    root = _dataset(tmp_path)
    path = root / "subjects" / "a" / "cameras.json"
    cams = json.loads(path.read_text())
    edit(cams)
    path.write_text(json.dumps(cams))
    with pytest.raises(DatasetFormatError, match=match):
        read_dataset(root)


def test_bad_subject_and_index(tmp_path):
    root = _dataset(tmp_path)
    meta = root / "subjects" / "b" / "subject.json"
    m = json.loads(meta.read_text())
    meta.write_text(json.dumps({**m, "kind": "indoor"}))
    with pytest.raises(DatasetFormatError, match=r"subject.json: field 'kind' must be one of"):
        read_subject(root / "subjects" / "b")
    meta.write_text(json.dumps(m))
    idx = json.loads((root / "dataset.json").read_text())
    idx["subjects"][1]["split"] = "train"
    (root / "dataset.json").write_text(json.dumps(idx))
    with pytest.raises(DatasetFormatError, match=r"subjects\[1\].split: index says 'train'"):
        read_dataset(root)
    (root / "dataset.json").write_text("{not json")
    with pytest.raises(DatasetFormatError, match="dataset.json: not valid JSON"):
        read_dataset(root)


def test_size_mismatch_detected(tmp_path):
    root = _dataset(tmp_path)
    path = root / "subjects" / "a" / "cameras.json"
    cams = json.loads(path.read_text())
    cams["views"][0]["width"] = 32
    path.write_text(json.dumps(cams))
    with pytest.raises(DatasetFormatError, match="is 16x16 but the view says 32x16"):
        read_dataset(root, check_images=True)


@pytest.fixture
def bad_images(tmp_path):
    good = tmp_path / "good.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 120, np.uint8)).save(good)
    data = good.read_bytes()
    files = {"empty": b"", "text": b"hello, I am not an image\n" * 10, "truncated": data[: len(data) // 2],
             "corrupt": data[:60] + bytes(len(data) - 60)}
    for name, content in files.items():
        (tmp_path / f"{name}.png").write_bytes(content)
    return tmp_path


@pytest.mark.parametrize("name,match", [("empty", "empty"), ("text", "not an image"),
                                        ("truncated", "truncated or corrupt"), ("corrupt", "truncated or corrupt")])
def test_bad_image_files_give_clear_errors(bad_images, name, match):
    with pytest.raises(DatasetFormatError, match=match) as err:
        read_image(bad_images / f"{name}.png")
    assert f"{name}.png" in str(err.value)


def test_sixteen_bit_and_missing(tmp_path):
    from PIL import Image

    arr = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    out = read_image(tmp_path / "g16.png")
    assert out.dtype == np.uint8 and out.shape == (8, 8, 1) and out.max() > 200
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")


def test_rewrite_is_atomic_marker(tmp_path):
    folder = tmp_path / "s"
    write_subject(folder, "s", "wild", "val", [_view()])
    assert not list(folder.rglob("*.tmp"))
    # A subject being rewritten has no subject.json until it is complete.
    with pytest.raises(ValueError):
        write_subject(folder, "s", "wild", "val", [ViewData(name="x", K=np.eye(3), world_to_cam=np.eye(4))])
    assert not (folder / "subject.json").exists()
