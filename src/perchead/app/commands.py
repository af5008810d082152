"""``perchead app``: serve the web page on this machine."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Literal


def app(
    host: str = "127.0.0.1",
    port: int | None = None,
    checkpoint: str = "demo",
    edit_checkpoint: str | None = None,
    clip: str | None = None,
    max_upload_mb: float = 20.0,
    device: Literal["auto", "cpu", "cuda"] = "auto",
    size: int = 512,
    frames: int = 60,
    fit_steps: int = 60,
    edit_fit_steps: int = 60,
    threads: int | None = None,
    work_dir: Path | None = None,
) -> int:
    """Start the perchead web page (docs/app.md): a "Reconstruct" tab (photo -> 3D viewer, turntable, views,
    .ply/.splat/.mp4 downloads) and an "Edit" tab (paint the segmentation map, give a style, render).

    It listens on 127.0.0.1 only unless --host says otherwise (e.g. 0.0.0.0 to serve the local network: there
    is no login, so only do that on a network you trust). Requests are queued and run one at a time.

    Args:
        host: address to listen on.
        port: port to listen on (default: 7860, or the next free one above it).
        checkpoint: reconstruction checkpoint folder, Hugging Face hub id, or "demo" (bundled).
        edit_checkpoint: editing checkpoint folder or hub id; default: the bundled demo editing checkpoint when
            it is installed (without one the Edit tab says so).
        clip: CLIP hub id or folder replacing the one the editing checkpoint names.
        max_upload_mb: largest upload accepted, megabytes.
        device: where the networks run; auto = cuda when available.
        size: side of every rendered view and of the turntable, pixels.
        frames: turntable frames.
        fit_steps: steps of the fit of each reconstruction to its photo (0: the network's prediction alone).
        edit_fit_steps: steps of the fit of each edited head to its painted map (0: the editing network alone).
        threads: CPU threads for the network and the rasteriser (default: all cores).
        work_dir: folder for the results (default: a temporary folder deleted on exit).
    """
    try:
        import gradio  # noqa: F401 -- fail before minutes of model loading, with the fix in the message
    except ImportError as exc:
        raise RuntimeError(f"perchead app needs gradio (pip install 'gradio>=6.31,<7'): {exc}") from exc
    from .handlers import AppConfig, PercheadApp

    if threads is not None:
        from perchead.inference import set_threads

        set_threads(threads)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"--port must be 1..65535, got {port}")
    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)  # the page shows the warnings it needs
    config = AppConfig(checkpoint=checkpoint, edit_checkpoint=edit_checkpoint, clip=clip, device=device,
                       size=size, frames=frames, fit_steps=fit_steps, edit_fit_steps=edit_fit_steps,
                       max_upload_mb=max_upload_mb, work_dir=work_dir)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"perchead app: listening on {host}: anyone who can reach this machine can use the page (there is "
              "no login)", file=sys.stderr)
    state = PercheadApp(config)
    if state.edit_error:
        print(f"perchead app: {state.edit_error}", file=sys.stderr)
    from .ui import launch

    try:
        launch(state, host=host, port=port, block=True)
    except KeyboardInterrupt:
        pass
    finally:
        state.close()
    return 0
