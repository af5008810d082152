"""Photo preprocessing: any portrait photo -> the 512x512 matted head crop and camera the network expects.

    from perchead.preprocess import preprocess_image
    out = preprocess_image("photo.jpg")          # out.image, out.mask, out.camera, out.crop_box, ...

See docs/preprocess.md for the pipeline, the options and the failure modes.
"""

from .crop import HeadGeometry, head_geometry
from .detect import DETECTORS, Face, detect_faces
from .io import ImageLoadError, SourceImage, load_image, open_image
from .pipeline import NoFaceError, PreprocessConfig, Preprocessed, preprocess_batch, preprocess_image

__all__ = [
    "DETECTORS", "Face", "HeadGeometry", "ImageLoadError", "NoFaceError", "PreprocessConfig", "Preprocessed",
    "SourceImage", "detect_faces", "head_geometry", "load_image", "open_image", "preprocess_batch",
    "preprocess_image",
]
