"""``perchead app``: serve the web page on this machine."""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Literal


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """SIGTERM (a service manager, ``kill``) and SIGHUP (the terminal closed) stop the app as Ctrl-C does, so
    its folder is deleted on every ordinary way of stopping it (Python's default for these is to die at once)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(signal.Signals(signum).name)

    wanted = [signal.SIGTERM] + ([signal.SIGHUP] if hasattr(signal, "SIGHUP") else [])
    saved = {s: signal.signal(s, interrupt) for s in wanted}
    try:
        yield
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)


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
    keep_results: bool = False,
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
        work_dir: the folder in which the app makes its own folder for uploads and results, deleted when the
            app stops (Ctrl-C, SIGTERM, SIGHUP); default: the system's temporary folder.
        keep_results: keep every result (in WORK_DIR/perchead-app-*/results, printed on exit): none is replaced
            by the same page's next one or deleted on exit. Uploads are deleted either way.
    """
    if importlib.util.find_spec("gradio") is None:  # fail before minutes of model loading, with the fix
        raise RuntimeError("perchead app needs gradio: pip install 'gradio>=6.31,<7'")
    from .handlers import AppConfig, PercheadApp

    if threads is not None:
        from perchead.inference import set_threads

        set_threads(threads)
    if port is not None and not 0 < port < 65536:
        raise ValueError(f"--port must be 1..65535, got {port}")
    logging.getLogger("perchead.preprocess").setLevel(logging.ERROR)  # the page shows the warnings it needs
    config = AppConfig(checkpoint=checkpoint, edit_checkpoint=edit_checkpoint, clip=clip, device=device,
                       size=size, frames=frames, fit_steps=fit_steps, edit_fit_steps=edit_fit_steps,
                       max_upload_mb=max_upload_mb, work_dir=work_dir, keep_results=keep_results)
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"perchead app: listening on {host}: anyone who can reach this machine can use the page (there is "
              "no login)", file=sys.stderr)
    with interrupted_by_signals():
        state = PercheadApp(config)
        atexit.register(state.close)  # again at exit, after a request that was running has ended
        try:
            if state.edit_error:
                print(f"perchead app: {state.edit_error}", file=sys.stderr)
            from .ui import launch

            page, url = launch(state, host=host, port=port, block=False)
            print(f"perchead app: serving {url} -- Ctrl-C stops it and deletes every upload and result"
                  + (f" (results are kept: --keep-results, in {state.results_dir})" if keep_results else ""),
                  flush=True)
            page.block_thread()  # until Ctrl-C / SIGTERM / SIGHUP
            page.close()
        except KeyboardInterrupt:
            pass
        finally:
            state.close()
    if keep_results:
        print(f"perchead app: the results are in {state.results_dir}", flush=True)
    return 0
