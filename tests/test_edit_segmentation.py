"""19-class maps: files, palette, a real face parser's loader, and the offline MediaPipe fallback."""

import numpy as np
import pytest
import torch
from PIL import Image

from perchead.data.format import SEG, SEGMENT_CLASSES
from perchead.edit.segmentation import (
    MEDIAPIPE_SOURCE,
    NUM_CLASSES,
    PALETTE,
    colorize,
    label_mapping,
    load_face_parser,
    load_segmentation,
    resize_segmentation,
    save_segmentation,
    segment_mediapipe,
)

# jonathandinu/face-parsing's id2label (its config.json on the hub)
FACE_PARSING_LABELS = ["background", "skin", "nose", "eye_g", "l_eye", "r_eye", "l_brow", "r_brow", "l_ear", "r_ear",
                       "mouth", "u_lip", "l_lip", "hair", "hat", "ear_r", "neck_l", "neck", "cloth"]


def test_png_round_trip_palette_and_errors(tmp_path):
    seg = np.arange(NUM_CLASSES, dtype=np.uint8).repeat(3)[None].repeat(5, 0)
    save_segmentation(tmp_path / "m.png", seg)
    assert np.array_equal(load_segmentation(tmp_path / "m.png"), seg)
    # a map painted in the palette colours reads back as the same ids
    Image.fromarray(colorize(seg)).save(tmp_path / "c.png")
    assert np.array_equal(load_segmentation(tmp_path / "c.png"), seg)
    assert len(np.unique(PALETTE, axis=0)) == NUM_CLASSES
    off = colorize(seg)
    off[0, 0] = (1, 2, 3)
    Image.fromarray(off).save(tmp_path / "off.png")
    with pytest.raises(ValueError, match="outside the class palette"):
        load_segmentation(tmp_path / "off.png")
    Image.fromarray(np.full((4, 4), 25, np.uint8)).save(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"unknown label\(s\) \[25\]"):
        load_segmentation(tmp_path / "bad.png")
    with pytest.raises(FileNotFoundError):
        load_segmentation(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="must be square"):
        resize_segmentation(np.zeros((10, 12), np.uint8), 8)
    small = resize_segmentation(seg[:, :5].repeat(1, 0)[:5], 20)
    assert small.shape == (20, 20) and set(np.unique(small)) <= set(np.unique(seg[:, :5]))


def test_face_parser_loads_by_folder_and_maps_labels(tmp_path):
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    cfg = SegformerConfig(num_channels=3, num_encoder_blocks=2, depths=[1, 1], sr_ratios=[2, 1],
                          hidden_sizes=[8, 16], num_attention_heads=[1, 1], decoder_hidden_size=16,
                          patch_sizes=[7, 3], strides=[4, 2], mlp_ratios=[2, 2],
                          id2label=dict(enumerate(FACE_PARSING_LABELS)),
                          label2id={n: i for i, n in enumerate(FACE_PARSING_LABELS)})
    torch.manual_seed(0)
    SegformerForSemanticSegmentation(cfg).save_pretrained(tmp_path / "parser")
    parser = load_face_parser(str(tmp_path / "parser"))
    table = label_mapping(cfg.id2label)
    assert table[13] == SEG["hair"] and table[2] == SEG["nose"] and table[17] == SEG["neck"]
    out = parser(np.random.default_rng(0).integers(0, 255, (40, 30, 3), dtype=np.uint8))
    assert out.labels.shape == (40, 30) and out.labels.dtype == np.uint8 and out.labels.max() < NUM_CLASSES
    assert out.source == f"face-parser:{tmp_path / 'parser'}"
    with pytest.raises(RuntimeError, match="cannot load the face parser"):
        load_face_parser(str(tmp_path / "nowhere"))
    with pytest.raises(ValueError, match="no CelebAMask-HQ class"):
        label_mapping({0: "background", 1: "tail"})


def test_mediapipe_fallback_on_the_astronaut():
    import skimage.data

    img = skimage.data.astronaut()
    seg = segment_mediapipe(img)
    labels = seg.labels
    assert seg.source == MEDIAPIPE_SOURCE and labels.shape == img.shape[:2]
    present = {SEGMENT_CLASSES[i] for i in np.unique(labels)}
    assert {"background", "skin", "l_brow", "r_brow", "l_eye", "r_eye", "nose", "u_lip", "l_lip", "hair",
            "neck"} <= present

    def centre(name):
        ys, xs = np.nonzero(labels == SEG[name])
        return ys.mean(), xs.mean()

    skin_y, skin_x = centre("skin")
    assert labels[int(skin_y), int(skin_x)] in (SEG["skin"], SEG["nose"])  # the face centre is face
    # her face is at about x 175-270, y 60-190 of the 512x512 photo
    assert 170 < skin_x < 270 and 60 < skin_y < 190
    assert centre("hair")[0] < skin_y  # hair above
    assert centre("neck")[0] > skin_y  # neck below
    assert centre("l_lip")[0] > centre("nose")[0] > centre("l_eye")[0] > centre("l_brow")[0]
    # the subject's own left eye is on the image's right
    assert centre("l_eye")[1] > centre("r_eye")[1]
    for y, x in [(0, 0), (0, 511), (511, 0)]:  # corners (the bottom right one is her suit)
        assert labels[y, x] == SEG["background"]
