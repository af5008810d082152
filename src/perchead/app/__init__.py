"""``perchead app``: a local web page to reconstruct a head from a photo and to edit one by painting its
segmentation map (docs/app.md).

:mod:`.handlers` holds everything the page does as plain functions (tested without a browser), :mod:`.painting`
turns painted maps into class ids, :mod:`.ui` wires them to gradio widgets (imported only when the page is built),
:mod:`.commands` is the command line.
"""

import os

# gradio and huggingface_hub read these when they are imported: the app sends no usage statistics anywhere.
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from .handlers import AppConfig, MapResult, PercheadApp, Result, viewer_gaussians
from .painting import MapError, labels_from_editor, labels_from_picture, nearest_class, palette_hex

__all__ = ["AppConfig", "MapError", "MapResult", "PercheadApp", "Result", "labels_from_editor",
           "labels_from_picture", "nearest_class", "palette_hex", "viewer_gaussians"]
