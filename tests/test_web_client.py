"""The browser client (metis_rt/server/web) end to end: headless Chromium, a fake microphone playing a WAV file,
the real server on tiny models. Chromium is driven over the DevTools protocol (CDP) with the ``websockets`` package.
The page also moves its stream by itself when its connection is lost (session.checkpoint / session.resume).

Needs Debian's ``chromium`` package (CI installs it); without it the test fails and says so.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import math
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import soundfile as sf
import soxr
import websockets

from .conftest import EXAMPLES_DIR
from .realparts import ServerThread

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
TOKEN = "web-test-token"
FAKE_MIC_RATE = 48000
SERVER_START_S = 60.0
BROWSER_START_S = 20.0
AUDIO_WAIT_S = 30.0
STOP_WAIT_S = 10.0
MIN_RECEIVED_S = 0.5  # processed audio the page must have received
MIN_RMS = 1e-3  # "not silent"
MIN_PNG_BYTES = 5000
SCREENSHOT_COPY = Path("/tmp/metis_web.png")  # for a person to look at
RESUME_KEY = "web-test-resume-key-of-at-least-32-bytes"
CHECKPOINTS_BEFORE_LOSS = 2
LOSS_AFTER_CHECKPOINT_S = 0.5  # output the page received after the checkpoint comes again from the resumed stream
MIN_AFTER_RESUME_S = 1.0  # output the resumed stream must produce

# Resolves (inside the page) once enough audio came back, or as soon as the page reports an error.
WAIT_FOR_AUDIO_JS = """
new Promise((resolve) => {
  const t = window.metisTest;
  const check = () => {
    const enough = t && t.sampleRate && t.samplesReceived >= %(seconds)s * t.sampleRate && t.lastStats;
    if (enough || (t && (t.lastError || t.state === "error"))) resolve(true);
    else setTimeout(check, 100);
  };
  check();
})
"""
SUMMARY_JS = """
(() => {
  const t = window.metisTest;
  let sum = 0, peak = 0, n = 0, finite = true;
  for (const chunk of t.recorded) {
    for (const x of chunk) {
      if (!Number.isFinite(x)) finite = false;
      sum += x * x; peak = Math.max(peak, Math.abs(x)); n += 1;
    }
  }
  return {
    state: t.state, framesReceived: t.framesReceived, samplesReceived: t.samplesReceived,
    sampleRate: t.sampleRate, lastStats: t.lastStats, lastError: t.lastError, ready: t.ready,
    blocksSent: t.blocksSent, recordedSamples: n, finite, rms: Math.sqrt(sum / Math.max(1, n)), peak,
    errorShown: !document.getElementById("error").hidden,
  };
})()
"""
WAIT_FOR_STOP_JS = """
new Promise((resolve) => {
  const check = () => (["stopped", "error"].includes(window.metisTest.state) ? resolve(window.metisTest.state)
                                                                              : setTimeout(check, 100));
  check();
})
"""


def find_browser() -> str:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.fail(
        "the web client test needs Chromium and none was found on PATH "
        f"(looked for {', '.join(BROWSERS)}); install it: apt-get install -y chromium"
    )


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def web_thread(combined_model_dir, tmp_path_factory) -> ServerThread:
    """The real server (SE only, one token, a resume key) on 127.0.0.1:<free port>, in a thread of this process."""
    from metis_rt.server.main import build_parser, build_server

    key_file = tmp_path_factory.mktemp("resume") / "keys"
    key_file.write_text(RESUME_KEY + "\n")
    args = ["--model-dir", str(combined_model_dir), "--port", "0", "--tasks", "se", "--deterministic"]
    args += ["--token", TOKEN, "--resume-key-file", str(key_file)]
    thread = ServerThread(build_server(build_parser().parse_args(args)), SERVER_START_S)
    yield thread
    thread.stop()


@pytest.fixture(scope="module")
def web_server(web_thread):
    return web_thread.server


@pytest.fixture
def fake_mic_wav(tmp_path) -> Path:
    """examples/speech_noisy.wav as 48 kHz mono 16-bit PCM: what Chromium's fake capture device plays (looped)."""
    samples, rate = sf.read(EXAMPLES_DIR / "speech_noisy.wav", dtype="float32", always_2d=True)
    mono = soxr.resample(samples.mean(axis=1), rate, FAKE_MIC_RATE)
    path = tmp_path / "fake_mic.wav"
    sf.write(path, mono, FAKE_MIC_RATE, subtype="PCM_16")
    return path


class Browser:
    """A headless Chromium process with a DevTools port (the port comes from its DevToolsActivePort file)."""

    def __init__(self, mic_wav: Path, workdir: Path):
        profile = workdir / "profile"
        self.log_path = workdir / "chromium.log"
        self.log = self.log_path.open("wb")
        command = [
            find_browser(),
            "--headless=new",
            "--no-sandbox",  # CI runs as root
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--window-size=820,900",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--use-fake-ui-for-media-stream",
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-audio-capture={mic_wav}",
            "--autoplay-policy=no-user-gesture-required",
            "about:blank",
        ]
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        self.port = self._devtools_port(profile / "DevToolsActivePort")

    def _devtools_port(self, port_file: Path) -> int:
        deadline = time.monotonic() + BROWSER_START_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"chromium exited with {self.process.returncode}:\n{self.log_tail()}")
            text = port_file.read_text() if port_file.exists() else ""
            if "\n" in text:  # "PORT\nPATH\n", written once the port is open
                return int(text.split("\n", 1)[0])
            time.sleep(0.05)  # the file appears once the browser is up; nothing to await on
        pytest.fail(f"chromium did not open its DevTools port within {BROWSER_START_S:g} s:\n{self.log_tail()}")

    def page_socket_url(self) -> str:
        """The DevTools WebSocket of the blank tab the browser opened with."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=5) as reply:
            targets = json.load(reply)
        for target in targets:
            if target["type"] == "page" and target["url"] == "about:blank":
                return target["webSocketDebuggerUrl"]
        raise AssertionError(f"no blank page among the browser's targets {[t['url'] for t in targets]}")

    def log_tail(self, lines: int = 30) -> str:
        self.log.flush()
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def close(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


class Page:
    """Minimal CDP client for one page: commands by id; events are kept until someone waits for them."""

    def __init__(self, ws):
        self.ws = ws
        self.ids = itertools.count(1)
        self.events: list[dict] = []

    async def _next(self) -> dict:
        message = json.loads(await self.ws.recv())
        if "method" in message:
            self.events.append(message)
        return message

    async def call(self, method: str, **params) -> dict:
        call_id = next(self.ids)
        await self.ws.send(json.dumps({"id": call_id, "method": method, "params": params}))
        while True:
            message = await self._next()
            if message.get("id") == call_id:
                if "error" in message:
                    raise AssertionError(f"CDP {method} failed: {message['error']}")
                return message["result"]

    async def event(self, method: str, timeout_s: float) -> dict:
        async with asyncio.timeout(timeout_s):
            while True:
                found = next((e for e in self.events if e["method"] == method), None)
                if found is not None:
                    self.events.remove(found)
                    return found["params"]
                await self._next()

    async def open(self, url: str, timeout_s: float = 10.0) -> None:
        """Navigate and wait for the load event, so that later evaluations run in the page's own context."""
        await self.call("Page.enable")
        await self.call("Page.navigate", url=url)
        await self.event("Page.loadEventFired", timeout_s)

    async def evaluate(self, expression: str, timeout_s: float = 10.0):
        async with asyncio.timeout(timeout_s):
            result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True)
        if "exceptionDetails" in result:
            raise AssertionError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


# ----------------------------------------------------------------------------- the test
async def drive(socket_url: str, page_url: str, screenshot: Path) -> tuple[dict, str]:
    async with websockets.connect(socket_url, max_size=None) as ws:
        page = Page(ws)
        await page.open(page_url)
        await page.evaluate(WAIT_FOR_AUDIO_JS % {"seconds": MIN_RECEIVED_S}, timeout_s=AUDIO_WAIT_S)
        summary = await page.evaluate(SUMMARY_JS)
        shot = await page.call("Page.captureScreenshot", format="png")
        screenshot.write_bytes(base64.b64decode(shot["data"]))
        await page.evaluate('document.getElementById("stop").click()')
        final_state = await page.evaluate(WAIT_FOR_STOP_JS, timeout_s=STOP_WAIT_S)
        return summary, final_state


def test_browser_streams_microphone_through_the_server(web_server, fake_mic_wav, tmp_path):
    base = f"http://127.0.0.1:{web_server.port}/"
    browser = Browser(fake_mic_wav, tmp_path)
    screenshot = tmp_path / "page.png"
    try:
        page_url = f"{base}?autostart=1&task=se&token={TOKEN}"
        summary, final_state = asyncio.run(drive(browser.page_socket_url(), page_url, screenshot))
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(f"{exc!r}\nchromium log:\n{browser.log_tail()}") from exc
    finally:
        browser.close()

    assert summary["lastError"] is None and not summary["errorShown"], summary
    assert summary["ready"]["type"] == "session.ready" and summary["ready"]["algorithmic_latency_ms"] > 0
    assert summary["lastStats"]["type"] == "stats" and summary["lastStats"]["hops"] >= 1
    assert summary["blocksSent"] > 0
    rate = summary["sampleRate"]
    assert summary["samplesReceived"] >= MIN_RECEIVED_S * rate, summary
    assert summary["recordedSamples"] == summary["samplesReceived"]
    assert summary["finite"] and summary["rms"] > MIN_RMS, summary
    assert final_state == "stopped"

    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > MIN_PNG_BYTES
    SCREENSHOT_COPY.write_bytes(png)


@pytest.fixture(scope="module")
def cpu_web_server(tmp_path_factory):
    """``metis-rt serve`` on a machine without weights: DeepFilterNet3 serves se (engine auto)."""
    from metis_rt.server.main import build_parser, build_server

    empty = tmp_path_factory.mktemp("no-weights")
    args = build_parser().parse_args(["--model-dir", str(empty), "--port", "0", "--token", TOKEN])
    thread = ServerThread(build_server(args), SERVER_START_S)
    yield thread.server
    thread.stop()


ENGINE_UI_JS = """
(() => ({
  engineOptions: [...document.getElementById("engine").options].map((o) => o.value),
  picked: document.getElementById("engine").value,
  shown: document.getElementById("st-engine").textContent,
  strengthHidden: document.getElementById("strength-row").hidden,
}))()
"""


def test_browser_picks_the_cpu_engine_and_sets_its_strength(cpu_web_server, fake_mic_wav, tmp_path):
    """The page lists the server's engines for the task, starts the one the link names with its strength, shows it,
    and moving the strength slider reaches the running session (session.update)."""
    base = f"http://127.0.0.1:{cpu_web_server.port}/"
    browser = Browser(fake_mic_wav, tmp_path)

    async def body():
        async with websockets.connect(browser.page_socket_url(), max_size=None) as ws:
            page = Page(ws)
            await page.open(f"{base}?autostart=1&task=se&engine=deepfilternet3&strength=20&token={TOKEN}")
            await page.evaluate(WAIT_FOR_AUDIO_JS % {"seconds": MIN_RECEIVED_S}, timeout_s=AUDIO_WAIT_S)
            summary, ui = await page.evaluate(SUMMARY_JS), await page.evaluate(ENGINE_UI_JS)
            strengths = [c.session.strength_db for c in list(cpu_web_server.connections)]
            slider = 'const s = document.getElementById("strength"); s.value = "6"; '
            await page.evaluate(slider + 's.dispatchEvent(new Event("change"));')
            deadline = time.monotonic() + STOP_WAIT_S
            while [c.session.strength_db for c in list(cpu_web_server.connections)] != [6.0]:
                assert time.monotonic() < deadline, "the strength update did not reach the session"
                await asyncio.sleep(0.1)
            await page.evaluate('document.getElementById("stop").click()')
            return summary, ui, strengths, await page.evaluate(WAIT_FOR_STOP_JS, timeout_s=STOP_WAIT_S)

    try:
        summary, ui, strengths, final_state = asyncio.run(body())
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(f"{exc!r}\nchromium log:\n{browser.log_tail()}") from exc
    finally:
        browser.close()
    assert summary["lastError"] is None and not summary["errorShown"], summary
    assert summary["ready"]["engine"] == "deepfilternet3", summary["ready"]
    assert summary["finite"] and summary["rms"] > MIN_RMS, summary
    assert ui == {
        "engineOptions": ["auto", "deepfilternet3", "rnnoise"],
        "picked": "deepfilternet3",
        "shown": "deepfilternet3",
        "strengthHidden": False,
    }, ui
    assert strengths == [20.0]
    assert final_state == "stopped"


# ----------------------------------------------------------------------------- moving the stream
WAIT_UNTIL_JS = """
new Promise((resolve) => {
  const t = window.metisTest;
  const check = () => ((%s) || t.lastError || t.state === "error" ? resolve(true) : setTimeout(check, 100));
  check();
})
"""
# Every text the move status shows, in order (the "resuming…" one lasts only as long as the move).
WATCH_MOVE_STATUS_JS = """
(() => {
  const element = document.getElementById("move-status");
  window.moveTexts = [];
  new MutationObserver(() => window.moveTexts.push(element.hidden ? "" : element.textContent))
    .observe(element, { childList: true, characterData: true, subtree: true, attributes: true });
})()
"""
MOVE_SUMMARY_JS = """
(() => {
  const t = window.metisTest;
  const pick = ["state", "checkpoints", "moves", "restarts", "resumeGapMs", "inputSamples", "outputSamples",
                "outputRepeated", "heldDropped", "overloadMs", "samplesReceived", "sampleRate", "lastError"];
  return {
    ...Object.fromEntries(pick.map((k) => [k, t[k]])),
    resumes: t.lastStats && t.lastStats.resumes, moveTexts: window.moveTexts,
    moveShown: document.getElementById("move-status").textContent,
    movesShown: document.getElementById("st-moves").textContent,
  };
})()
"""


async def _until(condition, what: str, timeout_s: float):
    deadline = time.monotonic() + timeout_s
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} within {timeout_s:g} s"
        await asyncio.sleep(0.05)
    return found


def test_browser_resumes_its_stream_when_the_connection_is_lost(web_thread, fake_mic_wav, tmp_path):
    """The server aborts the page's socket mid-stream (a lost worker: close 1006); the page reconnects with
    session.resume, re-sends the input the checkpoint did not hold, drops the output it already played, says so,
    and the stream goes on: after the stop, the output it kept is exactly as long as the input it sent."""
    server = web_thread.server
    browser = Browser(fake_mic_wav, tmp_path)

    async def body():
        async with websockets.connect(browser.page_socket_url(), max_size=None) as ws:
            page = Page(ws)
            await page.call("Runtime.enable")
            await page.open(f"http://127.0.0.1:{server.port}/?autostart=1&task=se&token={TOKEN}")
            await page.evaluate(WATCH_MOVE_STATUS_JS)

            def checkpointed():
                return next((c for c in list(server.connections) if c.checkpoints_sent >= CHECKPOINTS_BEFORE_LOSS), 0)

            conn = await _until(checkpointed, f"{CHECKPOINTS_BEFORE_LOSS} checkpoints", AUDIO_WAIT_S)
            await asyncio.sleep(LOSS_AFTER_CHECKPOINT_S)
            web_thread.loop.call_soon_threadsafe(conn.ws.transport.abort)
            await page.evaluate(WAIT_UNTIL_JS % "t.moves >= 1", timeout_s=AUDIO_WAIT_S)
            moved_at = (await page.evaluate(MOVE_SUMMARY_JS))["outputSamples"]
            more = f"t.outputSamples >= {moved_at} + {MIN_AFTER_RESUME_S} * t.sampleRate && t.lastStats.resumes >= 1"
            await page.evaluate(WAIT_UNTIL_JS % more, timeout_s=AUDIO_WAIT_S)
            await page.evaluate('document.getElementById("stop").click()')
            await page.evaluate(WAIT_FOR_STOP_JS, timeout_s=STOP_WAIT_S)
            crashes = [e["params"] for e in page.events if e["method"] == "Runtime.exceptionThrown"]
            return await page.evaluate(MOVE_SUMMARY_JS), moved_at, crashes

    try:
        summary, moved_at, crashes = asyncio.run(body())
    except (TimeoutError, AssertionError) as exc:
        raise AssertionError(f"{exc!r}\nchromium log:\n{browser.log_tail()}") from exc
    finally:
        browser.close()
    assert crashes == [], crashes
    assert summary["lastError"] is None and summary["state"] == "stopped", summary
    assert summary["moves"] == 1 and summary["restarts"] == 0 and summary["resumes"] == 1, summary
    assert summary["resumeGapMs"] > 0 and summary["heldDropped"] == 0, summary
    texts = [text for text in summary["moveTexts"] if text]
    assert any(text.startswith("Connection lost (code 1006) — resuming") for text in texts), texts
    gap_ms = math.floor(summary["resumeGapMs"] + 0.5)  # the page's Math.round: halves up (Python's round: to even)
    resumed = f"Resumed (gap {gap_ms} ms): the stream moved 1×."
    assert texts[-1] == summary["moveShown"] == resumed, texts
    assert summary["movesShown"] == "1"
    rate = summary["sampleRate"]
    assert summary["outputSamples"] >= moved_at + MIN_AFTER_RESUME_S * rate, summary
    assert summary["outputRepeated"] > 0, summary  # the output between the checkpoint and the loss came twice
    assert summary["samplesReceived"] == summary["outputSamples"], summary  # one stream: all it kept was played
    dropped = round(summary["overloadMs"] * rate / 1000)  # input the server cut out (overload) has no output
    if dropped == 0:  # what the page played is as long as what it sent: nothing lost, nothing twice
        assert summary["samplesReceived"] == summary["inputSamples"], summary
    else:
        assert summary["inputSamples"] - dropped - rate // 50 <= summary["samplesReceived"] <= summary["inputSamples"]
