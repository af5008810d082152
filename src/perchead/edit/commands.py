"""``perchead edit``: a segmentation map (geometry) + a style (reference image or text) -> the same files as
``perchead reconstruct`` (head.ply, head.splat, turntable.mp4, views.png, ...), written by its
:class:`~perchead.inference.Reconstructor`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Literal

import tyro

from perchead.data.format import SEG

from .fit import MapFitConfig
from .network import EditNetwork, load_edit_network
from .pipeline import (
    EDIT_FILES,
    fidelity_line,
    follow_map,
    generate_head,
    image_style,
    map_preprocessed,
    write_edit_files,
)
from .segmentation import load_face_parser, load_segmentation, resize_segmentation, segment_photo


def edit(
    seg: Path | None = None,
    out: Annotated[Path, tyro.conf.arg(aliases=("-o",))] = Path("edit"),
    style_image: Path | None = None,
    style_text: str | None = None,
    from_photo: Annotated[Path | None, tyro.conf.arg(name="from")] = None,
    checkpoint: str = "demo",
    clip: str | None = None,
    face_parser: str | None = None,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    size: int = 512,
    frames: int = 60,
    fps: float = 30.0,
    pitch: float = 10.0,
    video: bool = True,
    sharpen: bool = True,
    allow_no_face: bool = False,
    backend: Literal["auto", "cpu", "reference", "gsplat"] = "auto",
    fit_steps: int = MapFitConfig.steps,
    fit_gaussians: int = MapFitConfig.num_gaussians,
) -> int:
    """Edit a 3D head: the segmentation map sets the geometry, a reference image or a text prompt the style
    (docs/editing.md). Writes OUT/head.ply, head.splat, turntable.mp4, views.png, input_crop.png,
    input_mask.png, reconstruction.json (as `perchead reconstruct`) plus segmentation.png (class ids),
    segmentation_color.png and edit.json.

    Args:
        seg: segmentation map PNG (8-bit class ids 0..18, or painted in the class palette); square.
        out: output folder.
        style_image: reference image whose CLIP embedding is the style.
        style_text: text prompt whose CLIP embedding is the style (e.g. "a person with long red hair").
        from_photo: a photo: its map (unless --seg is given) and, without --style-*, its style.
        checkpoint: editing checkpoint folder or hub id (or an edit-stage training checkpoint), or "demo" (the
            bundled one; its style encoder is a small CLIP stand-in trained on synthetic heads' captions: text
            prompts work in the captions' words, e.g. "red hair", "long blonde hair", others are refused).
        clip: CLIP hub id or folder replacing the one the checkpoint names.
        face_parser: face-parsing model (hub id or folder, e.g. jonathandinu/face-parsing) for --from; default:
            the offline MediaPipe fallback.
        device: where the network runs; auto = cuda when available.
        size: side of every rendered view, pixels.
        frames: turntable frames. fps: turntable frame rate. pitch: turntable elevation, degrees.
        video: write turntable.mp4.
        sharpen: apply the checkpoint's SHP-CNN to renders.
        allow_no_face: --from: crop the centred square when no face is found.
        backend: rasteriser.
        fit_steps: steps fitting the head to the map from the map's camera (silhouette, labels, colours;
            docs/editing.md); 0: the editing network's Gaussians as they are. The fidelity (silhouette and
            per-class IoU) is written to edit.json either way.
        fit_gaussians: Gaussians after densifying for the fit (a square multiple of the network's).
    """
    from perchead.inference import ReconstructConfig, Reconstructor, staged_output
    from perchead.preprocess import load_image

    if seg is None and from_photo is None:
        raise ValueError("no geometry: pass a segmentation map with --seg MAP.png, or a photo with --from PHOTO")
    if style_image is not None and style_text is not None:
        raise ValueError("give one style: --style-image or --style-text, not both")
    if style_image is None and style_text is None and from_photo is None:
        raise ValueError("no style: pass --style-image REF.jpg or --style-text \"...\" (or --from PHOTO, whose "
                         "look is then the style)")
    for p in (seg, style_image, from_photo):
        if p is not None and not p.is_file():
            raise FileNotFoundError(f"{p}: no such file")
    net = load_edit_network(checkpoint, clip=clip)
    if net.notice:
        print(f"note on checkpoint {checkpoint}: {net.notice}", file=sys.stderr)
    config = ReconstructConfig(checkpoint=checkpoint, device=device, size=size, frames=frames, fps=fps,
                               pitch=pitch, video=video, sharpen=sharpen, allow_no_face=allow_no_face,
                               backend=backend)
    rec = Reconstructor(config, model=net)
    s = net.config.image_size

    pre, seg_source = None, None
    if from_photo is not None:
        pre = rec.preprocess(from_photo)
    if seg is not None:
        labels = load_segmentation(seg)
        seg_source = f"file:{seg}"
    else:
        parser = load_face_parser(face_parser) if face_parser else None
        result = segment_photo(pre.crop, parser, pre.mask)
        labels, seg_source = result.labels, result.source
    labels = resize_segmentation(labels, s)
    if not (labels != SEG["background"]).any():
        raise ValueError(f"the segmentation map ({seg_source}) is all background: nothing to build")
    if pre is None:
        pre = map_preprocessed(labels, config.crop_size, str(seg))

    if style_text is not None:
        style, style_desc = net.style_from_text(style_text), {"text": style_text}
    else:
        if style_image is not None:
            rgb = load_image(style_image, max_side=1024)[..., :3]
            style_desc = {"image": str(style_image)}
            mask = None
        else:  # the photo's own look, matted as the network's training inputs are
            rgb, mask = pre.crop, pre.mask
            style_desc = {"image": str(from_photo), "matted": True}
        style = image_style(net, rgb, mask, rec.device)

    fit = MapFitConfig(steps=fit_steps, num_gaussians=fit_gaussians)
    g = generate_head(net, labels, style, rec.device, rec.render_device)
    g, followed = follow_map(net, g, labels, fit, rec.config.backend)
    # SHP-CNN learned to sharpen the network's renders; a fitted head is not one
    result = rec.render_result(g, pre, sharpen=fit.steps == 0)
    info = {"checkpoint": checkpoint, "clip": net.edit_config.clip, "notice": net.notice or None,
            "segmentation": seg_source, "style": style_desc, "photo": None if from_photo is None else str(from_photo),
            **followed}
    # One staging folder for reconstruct's files and ours: all of them appear, or none.
    with staged_output(out) as stage:
        rec.write(result, stage)
        write_edit_files(stage, labels, info)
    names = [f.name for f in result.files] + list(EDIT_FILES)
    print(f"{seg_source} + style {style_desc} -> {out}/ [{', '.join(names)}]; {fidelity_line(followed)}",
          file=sys.stderr)
    return 0


__all__ = ["EDIT_FILES", "EditNetwork", "edit"]
