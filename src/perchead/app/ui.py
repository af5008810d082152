"""The gradio page: two tabs wired to :class:`perchead.app.handlers.PercheadApp`. All the work, and every
decision about bad input, lives in the handlers; this module only maps their results onto widgets.

Nothing here reaches outside the machine: gradio's analytics are off (perchead.app's __init__), the
theme uses system fonts (gradio's default theme would fetch none either, but a GoogleFont would), there are no
share links, and the splat viewer, fonts and scripts are all served by gradio itself.
"""

from __future__ import annotations

import gradio as gr  # analytics were switched off by perchead.app's __init__, before this import

from .handlers import PercheadApp, Result
from .painting import LEGEND_CSS, legend_html, palette_hex

HAIR = 17  # the brush's starting colour: hair is what people repaint most
SYSTEM_FONTS = ("DejaVu Sans", "Helvetica", "Arial", "sans-serif")
SYSTEM_MONO = ("DejaVu Sans Mono", "Menlo", "Consolas", "monospace")
QUEUE_SIZE = 16
MODEL = "perchead-model"  # one concurrency group: both tabs share the CPU and the (not thread-safe) models

CSS = LEGEND_CSS + """
#status-reconstruct, #status-edit {min-height: 4em}
/* the progress line ("rendering the turntable, frame 24/60") wraps in the narrow column instead of being cut */
#status-reconstruct .progress-text, #status-edit .progress-text, #status-reconstruct .meta-text,
#status-edit .meta-text {white-space: normal; overflow-wrap: anywhere; text-align: center}
.perchead-error {color: #b00020; font-weight: 600}
/* the viewers show a copy turned and scaled for the browser: downloads come from the Downloads list */
#viewer a[download], #edit-viewer a[download] {display: none}
#example-photo img {object-fit: contain; cursor: pointer}
"""

# gradio's splat viewer (gsplat.js's OrbitControls inside Model3D) starts its orbit at 0.5 rad to the side and
# 0.5 rad above, and Model3D's camera_position does not reach it. The head copy it shows faces its
# unturned camera (handlers.viewer_gaussians), so this page script turns the orbit to that camera -- the front
# view, as the views grid's "front" and the turntable's first frame show it -- before the first frame is drawn:
# it catches each OrbitControls while it is built (the only object gradio's bundle gives a `dampening`), and
# its first update() aims it at the head's centre from where the camera starts, (0, 0, -5), with no easing.
# If a later gradio changes this, the viewer keeps its own start (the browser test fails on that).
FRONT_CAMERA_JS = """<script>
(() => {
  Object.defineProperty(Object.prototype, "dampening", {configurable: true, set(value) {
    Object.defineProperty(this, "dampening", {value, writable: true, configurable: true, enumerable: true});
    if (!("minZoom" in this && "orbitSpeed" in this && "zoomSpeed" in this)) return;
    const controls = this;
    Object.defineProperty(controls, "update", {configurable: true, set(update) {
      const first = () => {
        Object.defineProperty(controls, "update", {value: update, writable: true, configurable: true});
        const easing = controls.dampening;
        if (typeof controls.setCameraTarget === "function") {
          controls.setCameraTarget({x: 0, y: 0, z: 0});
          controls.dampening = 1;
        }
        update();
        controls.dampening = easing;
      };
      Object.defineProperty(controls, "update", {value: first, writable: true, configurable: true});
    }});
  }});
})();
</script>"""


def theme() -> gr.themes.Base:
    return gr.themes.Default(font=list(SYSTEM_FONTS), font_mono=list(SYSTEM_MONO))


def status(result) -> str:
    """The status line for the page: the handler's message, errors marked as such."""
    if result.ok:
        return result.message
    return f'<span class="perchead-error">Error: {_escape(result.message)}</span>'


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _media(result: Result) -> tuple:
    f = result.files
    paths = [str(p) for p in result.downloads]
    return (str(f["viewer"]) if "viewer" in f else None, str(f["views"]) if "views" in f else None,
            str(f["video"]) if "video" in f else None, paths or None, str(f["ply"]) if "ply" in f else None)


def build(app: PercheadApp) -> gr.Blocks:
    """The page (its upload hints show ``app.config.max_upload_mb``; the limit itself is the server's)."""
    limit = app.config.max_upload_mb
    image_types = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"]

    with gr.Blocks(title="perchead", analytics_enabled=False, delete_cache=(3600, 7200)) as page:
        gr.Markdown("# perchead\nOne photo in, a 3D Gaussian head out (PercHead). Everything runs on this "
                    "machine; nothing is sent anywhere else.")
        with gr.Tabs():
            # -- Reconstruct ------------------------------------------------------------------------------
            with gr.Tab("Reconstruct", id="reconstruct"):
                with gr.Row():
                    with gr.Column(scale=1):
                        photo = gr.File(label=f"Photo (JPEG, PNG, WebP, ...; at most {limit:g} MB)",
                                        file_types=image_types, type="filepath", elem_id="photo")
                        run = gr.Button("Reconstruct", variant="primary", elem_id="run-reconstruct")
                        message = gr.Markdown(elem_id="status-reconstruct")
                        example = app_example()
                        if example is not None:
                            # a thumbnail (gr.Examples shows a File input's example as a text chip)
                            thumb = gr.Image(str(example), label="Example photo: click to use it", height=140,
                                             interactive=False, show_label=True, elem_id="example-photo",
                                             buttons=[])
                            thumb.select(lambda: str(example), outputs=[photo], show_progress="hidden")
                    with gr.Column(scale=2):
                        viewer = gr.Model3D(label="3D viewer (drag to turn, scroll to zoom)", height=420,
                                            elem_id="viewer", interactive=False)
                with gr.Row():
                    video = gr.Video(label="Turntable", elem_id="turntable", interactive=False, loop=True,
                                     autoplay=True, height=340)
                    views = gr.Image(label="Views", type="filepath", elem_id="views", interactive=False, height=340)
                downloads = gr.File(label="Downloads (.ply, .splat, .mp4, views, metadata)", file_count="multiple",
                                    elem_id="downloads", interactive=False)
                ply = gr.File(visible=False, elem_id="ply")  # the .ply alone, for API clients

                def on_reconstruct(path, request: gr.Request, progress=gr.Progress()):  # noqa: B008 -- gradio's idiom
                    result = app.reconstruct(path, progress=lambda f, what: progress(f, desc=what),
                                             session=_session(request))
                    return (*_media(result), status(result))

                run.click(on_reconstruct, inputs=[photo], outputs=[viewer, views, video, downloads, ply, message],
                          api_name="reconstruct", concurrency_id=MODEL, concurrency_limit=1,
                          show_progress_on=[message, viewer])

            # -- Edit -------------------------------------------------------------------------------------
            with gr.Tab("Edit", id="edit"):
                if app.edit_error is not None:
                    gr.Markdown(f'<span class="perchead-error">{_escape(app.edit_error)}</span>',
                                elem_id="edit-unavailable")
                else:
                    _edit_tab(app, image_types, limit)
        def on_unload(request: gr.Request) -> None:  # a closed (or reloaded) page takes its files with it
            if _session(request):
                app.end_session(_session(request))

        page.unload(on_unload)
    return page


def _session(request: gr.Request | None) -> str | None:
    return getattr(request, "session_hash", None) if request is not None else None


def app_example():
    from .handlers import EXAMPLE_PHOTO

    return EXAMPLE_PHOTO if EXAMPLE_PHOTO.is_file() else None


def _edit_tab(app: PercheadApp, image_types: list[str], limit: float) -> None:
    first = app.example_map()
    size = app.map_size()
    gr.Markdown("Paint the segmentation map (geometry) with the class colours below, describe the look (style) "
                "in words or give a reference image, then render. The map starts as the example photo's.")
    if app.edit_notice:
        gr.Markdown(f"**Note on this editing checkpoint:** {_escape(app.edit_notice)}", elem_id="edit-notice")
    gr.HTML(legend_html())
    with gr.Row():
        with gr.Column(scale=3):
            editor = gr.ImageEditor(
                value=first.picture if first.ok else None, type="numpy", image_mode="RGBA", format="png",
                sources=(), transforms=(), layers=False, canvas_size=(size, size), fixed_canvas=True,
                brush=gr.Brush(colors=palette_hex(), default_color=palette_hex()[HAIR], color_mode="fixed",
                               default_size=max(4, size // 32)),
                eraser=gr.Eraser(default_size=max(4, size // 32)), label="Segmentation map", elem_id="map-editor",
                height=560)
        with gr.Column(scale=2):
            map_photo = gr.File(label=f"New map from a photo (at most {limit:g} MB)", file_types=image_types,
                                type="filepath", elem_id="map-photo")
            map_file = gr.File(label="Or upload a map PNG (class ids 0..18 or class colours)",
                               file_types=[".png"], type="filepath", elem_id="map-file")
            style_text = gr.Textbox(label="Style: describe the look", value="a person with short brown hair",
                                    elem_id="style-text")
            style_image = gr.File(label="Or style from a reference image (used instead of the text)",
                                  file_types=image_types, type="filepath", elem_id="style-image")
            render = gr.Button("Render", variant="primary", elem_id="run-edit")
            message = gr.Markdown(first.message if first.ok else status(first), elem_id="status-edit")
    with gr.Row():
        viewer = gr.Model3D(label="3D viewer", height=420, elem_id="edit-viewer", interactive=False)
        views = gr.Image(label="Views", type="filepath", elem_id="edit-views", interactive=False)
    with gr.Row():
        video = gr.Video(label="Turntable", elem_id="edit-turntable", interactive=False, loop=True, autoplay=True,
                         height=340)
        downloads = gr.File(label="Downloads", file_count="multiple", elem_id="edit-downloads", interactive=False)
    ply = gr.File(visible=False, elem_id="edit-ply")

    def show_map(result):
        if result.ok:
            return result.picture, result.message
        return gr.skip(), status(result)

    def on_map_photo(path, request: gr.Request):
        return show_map(app.map_from_photo(path, session=_session(request)))

    def on_map_file(path, request: gr.Request):
        return show_map(app.map_from_file(path, session=_session(request)))

    map_photo.upload(on_map_photo, inputs=[map_photo], outputs=[editor, message], api_name="map_from_photo",
                     concurrency_id=MODEL, concurrency_limit=1)
    map_file.upload(on_map_file, inputs=[map_file], outputs=[editor, message], api_name="map_from_file",
                    concurrency_id=MODEL, concurrency_limit=1)

    def on_render(value, text, image, request: gr.Request, progress=gr.Progress()):  # noqa: B008 -- gradio's idiom
        result = app.render_edit(value, text, image, progress=lambda f, what: progress(f, desc=what),
                                 session=_session(request))
        return (*_media(result), status(result))

    render.click(on_render, inputs=[editor, style_text, style_image],
                 outputs=[viewer, views, video, downloads, ply, message], api_name="edit",
                 concurrency_id=MODEL, concurrency_limit=1, show_progress_on=[message, viewer])


def launch(app: PercheadApp, host: str = "127.0.0.1", port: int | None = None, block: bool = True):
    """Queue the page's requests and serve it. Returns (page, url); with ``block`` it serves until Ctrl-C (or
    SIGTERM, which `perchead app` turns into the same interruption).

    gradio's temporary folder (uploads, and copies of what the page shows) becomes the app's own folder, so
    :meth:`PercheadApp.close` deletes them with the results (one app per process: it is the environment's).
    """
    app.take_gradio_temp_dir()
    page = build(app)
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    # quiet: gradio's own lines include a tip to make a public share link, which this app must never do
    _, url, _ = page.launch(
        server_name=host, server_port=port, share=False, inbrowser=False, prevent_thread_lock=True, quiet=True,
        max_file_size=f"{app.config.max_upload_mb:g}mb", theme=theme(), css=CSS, head=FRONT_CAMERA_JS,
        footer_links=[], allowed_paths=[str(app.root)], show_error=True, ssr_mode=False, mcp_server=False)
    if block:
        try:
            page.block_thread()
        finally:
            page.close()
    return page, url


__all__ = ["CSS", "FRONT_CAMERA_JS", "build", "launch", "status", "theme"]
