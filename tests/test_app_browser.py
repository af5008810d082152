"""The web app in a real browser: headless Chromium (Debian's, driven by Playwright) against `perchead app`
served on 127.0.0.1. Pick the bundled photo, watch the progress count the turntable's frames, wait for the 3D
viewer to draw the head facing the viewer, download the .ply; paint on the segmentation map, render, and see
the result change; check that nothing left the machine; and stop a `perchead app` process with SIGTERM after
it served a photo: nothing of it may stay on disk.

Needs /usr/bin/chromium and the playwright package (scripts/install_browser.sh installs both; CI runs it).
Screenshots go to $PERCHEAD_TEST_ARTEFACTS, else to a pytest temporary folder.
"""

import contextlib
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
if not Path(CHROMIUM).is_file():
    pytest.skip("the browser test needs Debian's chromium (bash scripts/install_browser.sh installs it)",
                allow_module_level=True)
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="the browser test needs playwright (bash scripts/install_browser.sh installs it)",
    exc_type=ImportError)

from perchead.app import AppConfig, PercheadApp  # noqa: E402
from perchead.app.handlers import EXAMPLE_PHOTO, VIEWER_SCALE  # noqa: E402
from perchead.data.format import SEG  # noqa: E402
from perchead.edit import load_segmentation  # noqa: E402
from perchead.geometry import orbit_viewmats  # noqa: E402
from perchead.io import load_ply  # noqa: E402
from perchead.render import rasterize  # noqa: E402

# WebGL (the splat viewer) without a GPU: Chromium's software GL.
CHROMIUM_ARGS = ["--use-gl=angle", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--no-sandbox"]
# Software WebGL redraws the splat viewers (and the paint canvas) every animation frame, which on a 2-core
# machine starves the app server the test is waiting for: between the moments a test looks at a viewer
# (:func:`wait_until_drawn`, :func:`settled`), one animation frame per 10 s. (At ~5 per second a page showing a
# reconstructed head kept chromium's GPU process at 180% CPU, 150% at one per second, and the last test's app,
# beside that page, took 250-300 s instead of 35.) The looping turntable videos are paused as they start (no
# test watches them play): playing, the one video alone kept the GPU process at 140%; with both, 3%. (The CPU
# shares: `ps` of the GPU process in a scratch probe on a 2-core machine, not a script of the repository.)
# (window.perchead_fast() lifts the cap and runs the frames waiting for it, for screenshots of settled viewers;
# window.perchead_fast_frames = false puts it back;
# window.perchead_hold_frames() holds every frame until window.perchead_release_frames(): a screenshot taken
# while the viewers redraw timed out after 180 s on a 2-core machine at load average 20-27.)
SLOW_FRAMES = """(() => { const raf = window.requestAnimationFrame.bind(window);
  let held = null, next = 1;
  const waiting = new Map();
  const later = (cb) => { if (window.perchead_fast_frames) return raf(cb);
    const id = next++;
    waiting.set(id, [cb, setTimeout(() => { waiting.delete(id); raf(cb); }, 10000)]);
    return 0; };
  window.perchead_fast = () => { window.perchead_fast_frames = true;
    waiting.forEach(([cb, timer]) => { clearTimeout(timer); raf(cb); }); waiting.clear(); };
  window.requestAnimationFrame = (cb) => held ? (held.push(cb), 0) : later(cb);
  window.perchead_hold_frames = () => { held = held || []; };
  window.perchead_release_frames = () => { const cbs = held || []; held = null; cbs.forEach(later); };
  document.addEventListener("play", (e) => e.target.pause(), true);
})();"""
LOOPBACK = ("127.", "::1", "localhost")
# One request on a 2-core machine shared with other jobs: the paint test took 38 s with one core busy beside it and
# 103 s with both, and its edit render passed 180 s in a suite run beside a 2-thread evaluation; a hung app still
# fails, after 7 minutes.
TIMEOUT_MS = 420_000
RASTERIZE_DELAY_S = 0.3
# gradio's splat viewer used to start 0.5 rad to the side and 0.5 rad above (yaw and pitch in perchead's terms)
OLD_VIEWER_START_DEG = (28.65, 28.65)


class OutsideConnections:
    """Records every connection (and name lookup) this process makes to a host that is not this machine."""

    def __init__(self):
        self.seen: list[str] = []
        self._saved = None

    def __enter__(self):
        connect, connect_ex, getaddrinfo = socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo
        self._saved = connect, connect_ex, getaddrinfo
        guard = self

        def check(address):
            if isinstance(address, tuple) and not str(address[0]).startswith(LOOPBACK):
                guard.seen.append(str(address[0]))

        def guarded_connect(sock, address):
            check(address)
            return connect(sock, address)

        def guarded_connect_ex(sock, address):
            check(address)
            return connect_ex(sock, address)

        def guarded_getaddrinfo(host, *args, **kwargs):
            if host is not None and not str(host).startswith(LOOPBACK) and host not in ("", "0.0.0.0"):
                guard.seen.append(str(host))
            return getaddrinfo(host, *args, **kwargs)

        socket.socket.connect, socket.socket.connect_ex = guarded_connect, guarded_connect_ex
        socket.getaddrinfo = guarded_getaddrinfo
        return self

    def __exit__(self, *exc):
        socket.socket.connect, socket.socket.connect_ex, socket.getaddrinfo = self._saved


@pytest.fixture(scope="module")
def artefacts(tmp_path_factory) -> Path:
    folder = os.environ.get("PERCHEAD_TEST_ARTEFACTS")
    path = Path(folder) if folder else tmp_path_factory.mktemp("app_artefacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One app for the whole module (one reconstruction costs seconds): demo checkpoint for reconstruction; the
    bundled editing demo when it loads, else a tiny random editing network."""
    from perchead.app import ui

    root = tmp_path_factory.mktemp("app_browser")
    with OutsideConnections() as outside:
        # fit_steps=0 / edit_fit_steps=0: a fitted head has 65,536 (photo) or 16,384 (map) splats, which
        # software WebGL redraws too slowly for the paint test on a busy 2-core machine (a fitted edit took 60 s
        # of its 90 s wait); both fits through the app are tested in test_app_handlers, and the page's IoU
        # line is shown either way.
        settings = dict(size=256, frames=12, video_size=256, fit_steps=0, edit_fit_steps=0, device="cpu",
                        max_upload_mb=5, work_dir=root / "work")
        app = PercheadApp(AppConfig(**settings))
        if app.edit_error is not None:
            from test_app_handlers import save_tiny_edit_checkpoint

            ckpt = save_tiny_edit_checkpoint(root)
            app = PercheadApp(AppConfig(edit_checkpoint=str(ckpt), **settings), reconstructor=app.rec)
        # The tiny head's 12-frame turntable renders in well under a second on an idle machine, faster than the
        # page refreshes its progress; each chunk of frames made to last RASTERIZE_DELAY_S shows the counts a
        # person sees during a real (60 frames, fitted head: a minute or more) turntable.
        rasterize_now = app.rec.rasterize

        def slow_rasterize(*args, **kwargs):
            time.sleep(RASTERIZE_DELAY_S)
            return rasterize_now(*args, **kwargs)

        app.rec.rasterize = slow_rasterize
        page, url = ui.launch(app, host="127.0.0.1", port=None, block=False)
        assert url.startswith("http://127.0.0.1:")
        yield url, app, outside
        page.close()
        app.close()


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def open_page(browser, url: str, requests: list[str] | None = None):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.add_init_script(SLOW_FRAMES)
    page.set_default_timeout(TIMEOUT_MS)
    if requests is not None:
        page.on("request", lambda r: requests.append(r.url))
    page.goto(url)
    page.wait_for_selector("#run-reconstruct")
    return page


def close_page(page) -> None:
    # stop the viewers' drawing and the videos first: closing with them live takes many seconds
    page.evaluate("window.requestAnimationFrame = () => 0; document.querySelectorAll('video')"
                  ".forEach(v => v.pause())")
    page.close()


@pytest.fixture(scope="module")
def browser_page(served, browser):
    url, _, _ = served
    requests: list[str] = []
    page = open_page(browser, url, requests)
    yield page, requests
    close_page(page)


def download(page, container: str, name: str) -> tuple[str, bytes]:
    """(url, bytes) of the file called ``name`` in a gradio File list."""
    link = page.locator(f"{container} a[download='{name}']").first
    link.wait_for()
    href = link.get_attribute("href")
    response = page.request.get(href)
    assert response.ok, f"{href}: HTTP {response.status}"
    return href, response.body()


def canvas_picture(page, viewer: str) -> np.ndarray:
    """The viewer's canvas as RGB, without the label drawn over it and the frame around it."""
    style = page.add_style_tag(content=f"{viewer} [data-testid=block-label] {{visibility: hidden}}")
    png = page.locator(f"{viewer} canvas").first.screenshot()
    style.evaluate("e => e.remove()")
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[4:-4, 4:-4]


def head_picture(rgb: np.ndarray, size: int = 64) -> np.ndarray:
    """A picture of a head on black, cut to the square around everything drawn and resized: pictures of the
    same head from the same direction compare pixel by pixel whatever their framing and size."""
    ys, xs = np.nonzero(rgb.max(axis=2) > 10)
    assert len(ys), "nothing drawn"
    cy, cx = (ys.min() + ys.max()) / 2, (xs.min() + xs.max()) / 2
    half = max(ys.max() - ys.min(), xs.max() - xs.min()) / 2 + 2
    box = (int(cx - half), int(cy - half), int(cx + half), int(cy + half))
    return np.asarray(Image.fromarray(rgb).crop(box).resize((size, size), Image.Resampling.BILINEAR), np.float32)


def facing_yaw(picture: np.ndarray) -> float:
    """The yaw (degrees) perchead's pose estimate reads off a :func:`head_picture` on black."""
    import torch

    from perchead.inference.pose import estimate_pose

    rgb = np.asarray(Image.fromarray(picture.astype(np.uint8)).resize((128, 128), Image.Resampling.BILINEAR),
                     np.float32) / 255
    mask = torch.from_numpy((rgb.max(axis=2) > 0.04).astype(np.float32))[None]
    return estimate_pose(torch.from_numpy(rgb).permute(2, 0, 1), mask).yaw_deg


def render_on_black(ply: Path, yaw: float, pitch: float) -> np.ndarray:
    """The head of ``ply`` from (yaw, pitch), at the viewer's distance (5 units of the x4 copy), on black."""
    import torch

    g = load_ply(ply)
    K = torch.tensor([[[900.0, 0.0, 256.0], [0.0, 900.0, 256.0], [0.0, 0.0, 1.0]]])
    rgb = rasterize(g, orbit_viewmats([yaw], [pitch], 5.0 / VIEWER_SCALE), K, 512, 512, background=0.0).rgb[0]
    return (rgb.clamp(0, 1) * 255).round().byte().numpy()


def drawn_fraction(png: bytes, threshold: int = 40) -> float:
    """Share of pixels of a screenshot brighter than the viewer's black background."""
    rgb = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    return float((rgb.max(axis=2) > threshold).mean())


def wait_until_drawn(page, viewer: str, share: float = 0.02, seconds: float = 30.0) -> None:
    """Wait until a splat viewer's canvas has non-background pixels (software WebGL: it takes a few seconds
    to load, sort and draw); fail if it never does."""
    canvas = page.locator(f"{viewer} canvas").first
    canvas.wait_for()
    fraction, deadline = 0.0, time.monotonic() + seconds
    page.evaluate("window.perchead_fast()")
    try:
        while fraction < share and time.monotonic() < deadline:
            time.sleep(1.0)
            fraction = drawn_fraction(canvas.screenshot())
    finally:
        page.evaluate("window.perchead_fast_frames = false")
    assert fraction >= share, f"the 3D viewer {viewer} drew only {fraction:.1%} non-background pixels"


@contextlib.contextmanager
def settled(page) -> Iterator[None]:
    """Let the splat viewers draw at full frame rate for a few seconds (they sort their splats), then hold
    every animation frame and the videos while the body runs (screenshots)."""
    page.evaluate("window.perchead_fast()")
    time.sleep(3)
    page.evaluate("window.perchead_fast_frames = false; window.perchead_hold_frames(); "
                  "document.querySelectorAll('video').forEach(v => v.pause())")
    time.sleep(0.5)
    try:
        yield
    finally:
        page.evaluate("window.perchead_release_frames()")


def screenshot(page, path: Path) -> None:
    """A full-page screenshot once the splat viewers have settled. It is a picture for the docs, not a check:
    after the paint test, on a 2-core machine at load average 20-27, Chromium did not deliver one in 180 s
    (the same page alone: 4 s), so a screenshot that does not come in 60 s becomes a warning."""
    page.mouse.move(2, 2)  # off the paint canvas: no brush cursor in the picture
    with settled(page):
        try:
            page.screenshot(path=str(path), full_page=True, timeout=60_000)
        except playwright_api.TimeoutError:
            warnings.warn(f"no screenshot {path.name} within 60 s (a busy machine?)", stacklevel=2)


def wait_for_status(page, selector: str, *words: str) -> str:
    checks = " || ".join(f"t.includes({w!r})" for w in words)
    page.wait_for_function(f"(() => {{ const e = document.querySelector({selector!r}); if (!e) return false; "
                           f"const t = e.innerText; return {checks}; }})()", timeout=TIMEOUT_MS)
    return page.inner_text(selector)


# Every text the status line shows, recorded by the page itself (a poll from here could miss short ones).
# (stopped afterwards: reading the text on every change of the page costs the busy page a lot of time)
RECORD_STATUS = """(selector) => { window.perchead_seen = new Set();
  window.perchead_recorder = new MutationObserver(() => { const e = document.querySelector(selector);
    if (e) window.perchead_seen.add(e.textContent); });
  window.perchead_recorder.observe(document.body, {subtree: true, childList: true, characterData: true}); }"""


def test_reconstruct_in_the_browser(browser_page, artefacts, tmp_path):
    page, _ = browser_page
    page.click("#example-photo img")  # the example's thumbnail puts the photo in the upload box
    page.locator("#photo a[download='example_photo.jpg']").wait_for()
    page.evaluate(RECORD_STATUS, "#status-reconstruct")
    page.click("#run-reconstruct")
    text = wait_for_status(page, "#status-reconstruct", "Reconstructed", "Error")
    assert text.startswith("Reconstructed 4,096 Gaussians"), text
    # the progress counted the turntable's frames while it was rendered: the page never looked hung
    page.evaluate("window.perchead_recorder.disconnect()")
    seen = page.evaluate("Array.from(window.perchead_seen)")
    frames = {int(m) for t in seen for m in re.findall(r"turntable: frame (\d+)/12", t)}
    assert len(frames) >= 2, f"the turntable's progress did not move: {sorted(frames)} in {seen}"

    wait_until_drawn(page, "#viewer")
    _, ply = download(page, "#downloads", "head.ply")
    assert ply.startswith(b"ply\nformat binary_little_endian 1.0\n")
    (tmp_path / "head.ply").write_bytes(ply)
    g = load_ply(tmp_path / "head.ply")
    assert len(g) == 4096 and np.isfinite(g.means.numpy()).all()
    for name in ("head.splat", "turntable.mp4", "views.png"):
        assert len(download(page, "#downloads", name)[1]) > 1000, name
    info = json.loads(download(page, "#downloads", "reconstruction.json")[1])
    assert info["source"] == "example_photo.jpg" and '"/' not in json.dumps(info), info  # no server paths

    # The viewer starts facing the head, as the views' "front" (and the turntable's first frame) does. Its
    # picture, untouched (the splats sorted, so the settled picture), is compared with renders of the downloaded
    # head from the front, the back and where gradio's viewer started before (29 degrees to the side and above).
    # The viewer draws blurrier and brighter than our renders, which puts every render 15-18 apart from it pixel
    # by pixel (mean absolute difference of the normalised pictures, 0-255), so the direction it faces is read by
    # perchead's own head-pose estimate (Face Mesh landmarks + the pose net): the viewer's yaw must be the front
    # render's, and the old start's must not. Measured with the demo of issue 27's shoulders: yaw -7.6 (viewer),
    # -6.8 (front), +32.9 (old start); the bound, 15 degrees, is 19x the viewer's distance and 2.6x under the old
    # start's. The pixel difference still tells the front from the back: 17.6 against 32.7 (bound 1.5x).
    with settled(page):
        viewer = head_picture(canvas_picture(page, "#viewer"))
    renders = {name: head_picture(render_on_black(tmp_path / "head.ply", *angles))
               for name, angles in {"front": (0.0, 0.0), "back": (180.0, 0.0), "old start": OLD_VIEWER_START_DEG}
               .items()}
    Image.fromarray(viewer.astype(np.uint8)).save(tmp_path / "viewer_start.png")
    yaw = {name: facing_yaw(p) for name, p in {"viewer": viewer, **renders}.items() if name != "back"}
    distance = {name: float(np.abs(r - viewer).mean()) for name, r in renders.items()}
    print("viewer's first picture: estimated yaw", {k: round(v, 1) for k, v in yaw.items()}, "pixel difference",
          {k: round(v, 1) for k, v in distance.items()})
    assert abs(yaw["old start"] - yaw["front"]) > 15.0, yaw  # the estimate tells the two starts apart
    assert abs(yaw["viewer"] - yaw["front"]) < 15.0, f"the viewer starts turned to the side: {yaw}"
    assert distance["front"] * 1.5 < distance["back"], distance
    screenshot(page, artefacts / "app_reconstruct.png")


def test_bad_upload_is_a_message_in_the_page(browser_page, artefacts, tmp_path):
    page, _ = browser_page
    page.click("button[role=tab]:has-text('Reconstruct')")
    bad = tmp_path / "holiday.jpg"
    bad.write_bytes(b"GIF89a but not really an image" * 20)
    clear = page.locator("#photo button[aria-label='Clear']")
    if clear.count():  # the photo an earlier test left in the box (none when this test runs alone)
        clear.click()
    page.set_input_files("#photo input[type=file]", str(bad))
    page.locator("#photo a[download='holiday.jpg']").wait_for()
    page.click("#run-reconstruct")
    text = wait_for_status(page, "#status-reconstruct", "Error")
    assert "holiday.jpg" in text and ("not a recognised image" in text or "corrupt" in text), text
    assert "/tmp" not in text and "b'" not in text  # no server paths, no Python reprs
    page.locator("#status-reconstruct").screenshot(path=str(artefacts / "app_bad_upload.png"))


def test_uploads_over_the_limit_are_refused(served):
    import httpx

    url, app, _ = served
    payload = b"\0" * int((app.config.max_upload_mb + 1) * 2**20)
    response = httpx.post(f"{url}gradio_api/upload", files={"files": ("big.jpg", payload, "image/jpeg")},
                          timeout=30)
    assert response.status_code == 413, (response.status_code, response.text[:200])


def test_paint_render_and_the_result_changes(browser_page, artefacts):
    page, _ = browser_page
    page.click("button[role=tab]:has-text('Edit')")
    page.wait_for_selector("#map-editor canvas")
    page.fill("#style-text textarea", "a person with long red hair")  # words the bundled stand-in CLIP knows
    page.click("#run-edit")
    text = wait_for_status(page, "#status-edit", "Rendered", "Error")
    assert text.startswith("Rendered the edited head"), text
    # the measured fidelity to the painting is shown with the render (issue 16), apart from what was not
    # measured (whether the style took)
    assert re.search(r"Measured, .* silhouette IoU [01]\.\d\d", text) and "Not measured" in text, text
    before_url, before_ply = download(page, "#edit-downloads", "head.ply")
    _, before_map = download(page, "#edit-downloads", "segmentation_color.png")

    # paint a band of hair (the brush's starting colour) across the face, at full frame rate so the editor
    # sees every pointer event; few events, as each one redraws the canvas (slow with software WebGL)
    page.click("#map-editor button[aria-label='Brush']")
    box = page.locator("#map-editor canvas").first.bounding_box()
    page.evaluate("window.perchead_fast()")
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    page.mouse.move(x - 90, y)
    page.mouse.down()
    for k in range(1, 4):
        time.sleep(0.2)
        page.mouse.move(x - 90 + 60 * k, y + 3 * k)
    time.sleep(0.2)
    page.mouse.up()
    time.sleep(0.5)
    page.evaluate("window.perchead_fast_frames = false")
    page.click("#run-edit")
    # gradio serves files under a hash of their content: a new head.ply link means a different head
    try:
        page.wait_for_function(
            "(u) => { const a = document.querySelector(\"#edit-downloads a[download='head.ply']\"); "
            "return a && a.getAttribute('href') !== u; }", arg=before_url, timeout=TIMEOUT_MS)
    except playwright_api.TimeoutError:
        pytest.fail(f"the edited head did not change after painting: {page.inner_text('#status-edit')}")
    text = wait_for_status(page, "#status-edit", "Rendered", "Error")
    assert text.startswith("Rendered the edited head"), text
    _, after_ply = download(page, "#edit-downloads", "head.ply")
    _, after_map = download(page, "#edit-downloads", "segmentation_color.png")

    hair = [(load_segmentation_bytes(m) == SEG["hair"]).sum() for m in (before_map, after_map)]
    assert hair[1] > hair[0], f"painting did not add hair to the map ({hair})"
    assert after_ply != before_ply, "the edited head did not change after painting"
    screenshot(page, artefacts / "app_edit.png")


def test_typed_styles_colour_the_hair_as_named(served, browser_page, artefacts):
    # Issue 31 in the browser: the Edit tab's text box with the bundled demo gives hair of the colour typed.
    from perchead.edit.fidelity import gaussian_labels
    from perchead.edit.pipeline import map_camera
    from perchead.inference.reconstruct import srgb_to_lab

    _, app, _ = served
    if app.config.edit_checkpoint not in (None, "demo"):
        pytest.skip("the bundled editing demo did not load; the tiny random stand-in has no text styles to test")
    page, _ = browser_page
    page.click("button[role=tab]:has-text('Edit')")
    hair_lab = {}
    link = "#edit-downloads a[download='head.ply']"
    for prompt in ("black hair", "red hair"):
        before = page.locator(link).first.get_attribute("href") if page.locator(link).count() else None
        page.fill("#style-text textarea", prompt)
        page.click("#run-edit")
        text = wait_for_status(page, "#status-edit", f'(style: text "{prompt}")', "Error")
        assert "Rendered the edited head" in text, text
        # a new head.ply link (gradio names files by content): this render's files, not the last one's
        page.wait_for_function(f"(u) => {{ const a = document.querySelector({link!r}); "
                               "return a && a.getAttribute('href') !== u; }", arg=before, timeout=TIMEOUT_MS)
        _, ply = download(page, "#edit-downloads", "head.ply")
        _, png = download(page, "#edit-downloads", "segmentation_color.png")
        seg = load_segmentation_bytes(png)
        with tempfile.NamedTemporaryFile(suffix=".ply") as f:
            f.write(ply)
            f.flush()
            head = load_ply(f.name)
        hair = gaussian_labels(head, torch.from_numpy(seg.astype(np.int64)), *map_camera(seg.shape[0]))
        hair = hair[:, SEG["hair"]] > 0.5
        assert int(hair.sum()) > 100, int(hair.sum())
        hair_lab[prompt] = srgb_to_lab(head.rgb[hair].mean(0).double().numpy())
        if prompt == "red hair":
            screenshot(page, artefacts / "app_edit_red_hair.png")
    # issue 31's bound (as tests/test_edit_demo_checkpoint.py's, on the app's own map and files). Measured: mean
    # hair Lab (35.6, 26.9, 8.9) for "red hair", (17.1, 8.1, 10.6) for "black hair": a* 18.8 apart.
    assert hair_lab["red hair"][1] > hair_lab["black hair"][1] + 10.0, hair_lab


def load_segmentation_bytes(png: bytes) -> np.ndarray:
    import tempfile

    with tempfile.NamedTemporaryFile(suffix=".png") as f:
        f.write(png)
        f.flush()
        return load_segmentation(f.name)


def test_nothing_left_the_machine(served, browser_page):
    _, _, outside = served
    _, requests = browser_page
    hosts = {r.split("/")[2] for r in requests if "://" in r and not r.startswith(("data:", "blob:"))}
    assert hosts and all(h.startswith(("127.0.0.1", "localhost")) for h in hosts), hosts
    assert not outside.seen, f"the app process contacted {sorted(set(outside.seen))}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def files_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if not p.is_dir())


def test_sigterm_leaves_nothing_of_the_photo(browser, artefacts, tmp_path):
    """`perchead app` stopped with SIGTERM (a service manager, `kill`) after serving a photo: its work folder,
    gradio's upload folder and the temporary folder hold no file of it; what it delivered names no server path."""
    work, gradio_default, temp = tmp_path / "work", tmp_path / "gradio-default", tmp_path / "tmp"
    for folder in (work, gradio_default, temp):
        folder.mkdir()
    photo = tmp_path / "photos" / "my_face.jpg"
    photo.parent.mkdir()
    shutil.copy(EXAMPLE_PHOTO, photo)
    env = {**os.environ, "GRADIO_TEMP_DIR": str(gradio_default), "TMPDIR": str(temp), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-c", "import sys; from perchead.cli import main; sys.exit(main())", "app",
               "--port", str(free_port()), "--work-dir", str(work), "--size", "128", "--frames", "4",
               "--fit-steps", "0", "--edit-fit-steps", "0", "--device", "cpu", "--threads", "1"]
    app = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(app.stdout), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + TIMEOUT_MS / 1000
        while not any("serving http" in line for line in lines) and app.poll() is None:
            assert time.monotonic() < deadline, f"the app did not start: {''.join(lines)}"
            time.sleep(0.5)
        url = re.search(r"serving (http://\S+)", "".join(lines))
        assert url, f"the app did not start: {''.join(lines)}"
        page = open_page(browser, url.group(1))
        page.set_input_files("#photo input[type=file]", str(photo))
        page.locator("#photo a[download='my_face.jpg']").wait_for()
        page.click("#run-reconstruct")
        text = wait_for_status(page, "#status-reconstruct", "Reconstructed", "Error")
        assert text.startswith("Reconstructed"), text
        delivered = download(page, "#downloads", "reconstruction.json")[1].decode()
        assert str(tmp_path) not in delivered and '"/' not in delivered, delivered
        # while it runs, the upload and the results are in the app's own folder, and only there
        held = files_under(work)
        assert any(p.name == "my_face.jpg" for p in held) and any(p.name == "head.ply" for p in held), held
        assert not files_under(gradio_default), files_under(gradio_default)

        app.send_signal(signal.SIGTERM)  # with the page still open
        assert app.wait(timeout=120) == 0, "".join(lines)
        close_page(page)
    finally:
        if app.poll() is None:
            app.kill()
            app.wait()
    reader.join(timeout=10)
    assert "share=True" not in "".join(lines)  # gradio's tip to make a public link: not for this app
    left = files_under(work) + files_under(gradio_default) + files_under(temp)
    assert not left and not list(work.iterdir()), left
