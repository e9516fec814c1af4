"""Peak memory of a real server under hostile uploads (issue 18, "Done when": under 2 GB above its idle size).

Starts ``streamlit run app.py`` (headless, no file watcher, a free port on 127.0.0.1, the project's config and
default budgets), drives it with Chromium through Playwright as a user would (tests/test_browser.py's helpers),
and reads the server's memory from /proc/<pid>/status: VmRSS, and VmHWM (the peak), reset before each case
through /proc/<pid>/clear_refs, so each case's peak is its own. Idle is the server's VmRSS once a first tab has
opened the app on the embedded model (models loaded, nothing uploaded). Cases, every file built here in memory:

- zips, one session: three ~1 MB zips that each expand to 1 GiB (sizes declared honestly) uploaded one after the
  other under "Upload by class";
- zips, three sessions: three more tabs (own browser contexts) open at once, each uploading the three zips, round
  robin;
- bundles, two sessions: under "An analysis file", a small bundle whose statistics declare 250M channels; a ~4 MB
  bundle whose stats.parquet expands to 4 GiB (declared honestly); the same declaring 1 MiB (a lying header);
- legitimate uploads up to the budgets: ``--fill-sessions`` (default 4) sessions each upload a ``--fill-mib``
  (default 480) MiB zip that fits its session's 512 MiB; the server's 1,536 MiB for all sessions together refuses
  the fourth. What full sessions cost, and the bound on it.

Printed per case: peak RSS above idle, RSS after, what the page said. With ``--after-close S`` the tabs are closed
and, S seconds later (Streamlit keeps a closed tab's session ~2 minutes for a reconnect), the RSS is printed again.

    python benchmarks/hostile_memory.py [--fill-mib 480] [--fill-sessions 4] [--after-close 150] [--log F]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MIB = 1 << 20
MODEL = "se_resnet_fmnist"
TARGET_MB = 2000


# ------------------------------------------------------------------------------------------ hostile files


def raw_zip(members: list[tuple[str, int, bytes, int, int]]) -> bytes:
    """A zip written record by record: (name, method, payload as stored, CRC-32, declared uncompressed size)."""
    out, central = io.BytesIO(), io.BytesIO()
    for name, method, payload, crc, size in members:
        raw = name.encode()
        offset = out.tell()
        sizes = struct.pack("<3I", crc, len(payload), size)
        out.write(struct.pack("<4s5H", b"PK\x03\x04", 20, 0, method, 0, 33) + sizes
                  + struct.pack("<2H", len(raw), 0) + raw + payload)
        central.write(struct.pack("<4s6H", b"PK\x01\x02", 20, 20, 0, method, 0, 33) + sizes
                      + struct.pack("<5H2I", len(raw), 0, 0, 0, 0, 0o644 << 16, offset) + raw)
    start = out.tell()
    out.write(central.getvalue())
    out.write(struct.pack("<4s4H2IH", b"PK\x05\x06", 0, 0, len(members), len(members), len(central.getvalue()),
                          start, 0))
    return out.getvalue()


def zeros_deflated(mib: int) -> tuple[bytes, int]:
    """``mib`` MiB of zeros as one raw deflate stream (one 1 MiB segment repeated: a full flush resets the
    dictionary, so the segment can repeat; about 1 KB per MiB) and their CRC-32."""
    chunk = bytes(MIB)
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)
    segment = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    crc = 0
    for _ in range(mib):
        crc = zlib.crc32(chunk, crc)
    return segment * mib + zlib.compressobj(9, zlib.DEFLATED, -15).flush(), crc


def image_zip(total_mib: int, seed: int, member_mib: int = 64) -> bytes:
    """A zip of ``*.png`` members of zeros under one class folder, expanding to ``total_mib`` MiB, sizes honest."""
    body, crc = zeros_deflated(member_mib)
    return raw_zip([(f"class{seed}/zeros_{i}.png", zipfile.ZIP_DEFLATED, body, crc, member_mib * MIB)
                    for i in range(total_mib // member_mib)])


def genuine_bundle_members() -> dict[str, bytes]:
    """The members of a small genuine bundle (written by the library)."""
    import numpy as np

    from senet_viz.analysis.bundle import provenance, write_bundle
    from senet_viz.analysis.stats import GateStats

    blocks = [{"name": "SE_2_1", "stage": 2, "channels": 8}, {"name": "SE_5_1", "stage": 5, "channels": 16}]
    stats = GateStats.for_blocks("toy", blocks, ["cat", "dog", "owl"])
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, 60)
    for b in blocks:
        stats.update(b["name"], rng.uniform(size=(60, b["channels"])), labels)
    prov = provenance(model="toy", weights="toy.safetensors", weights_digest="abc", images="/data/x", n_images=60,
                      n_classes=3, command=["python", "-m", "senet_viz", "paper"])
    with tempfile.TemporaryDirectory() as tmp:
        path = write_bundle(Path(tmp) / "genuine", stats, prov)
        with zipfile.ZipFile(path) as zf:
            return {name: zf.read(name) for name in zf.namelist()}


def channel_bomb() -> bytes:
    """The genuine bundle with its statistics' metadata declaring 250M channels in one block (a few KB)."""
    import pyarrow.parquet as pq

    members = genuine_bundle_members()
    table = pq.read_table(io.BytesIO(members["stats.parquet"]))
    metadata = dict(table.schema.metadata)
    key = next(k for k, v in metadata.items() if b'"blocks"' in v)
    meta = json.loads(metadata[key])
    meta["blocks"][0]["channels"] = 250_000_000
    metadata[key] = json.dumps(meta).encode()
    out = io.BytesIO()
    pq.write_table(table.replace_schema_metadata(metadata), out, compression="zstd")
    members["stats.parquet"] = out.getvalue()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return buf.getvalue()


def expansion_bomb(declared_mib: int | None, mib: int = 4095) -> bytes:
    """The genuine bundle whose stats.parquet is ``mib`` MiB of deflated zeros (~4 MB for 4 GiB), declared as
    ``declared_mib`` MiB (None: honestly). A lying size keeps the CRC of what it declares, so a reader that
    trusted it would read a parquet of zeros."""
    members = genuine_bundle_members()
    body, crc = zeros_deflated(mib)
    size = mib * MIB
    if declared_mib is not None:
        size, crc = declared_mib * MIB, zlib.crc32(bytes(declared_mib * MIB))
    rows = [(name, zipfile.ZIP_STORED, blob, zlib.crc32(blob), len(blob))
            for name, blob in members.items() if name != "stats.parquet"]
    rows.append(("stats.parquet", zipfile.ZIP_DEFLATED, body, crc, size))
    return raw_zip(rows)


# ------------------------------------------------------------------------------------------ the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM of ``pid`` in bytes."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


def reset_peak(pid: int) -> None:
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


class Server:
    def __init__(self, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log.open("w")
        env = {k: v for k, v in os.environ.items() if not k.startswith("SENET_VIZ_SESSION")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", "app.py", "--server.headless", "true",
             "--server.fileWatcherType", "none", "--server.port", str(self.port), "--server.address", "127.0.0.1",
             "--browser.gatherUsageStats", "false"], cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=2) as r:
                    if r.read().decode().strip() == "ok":
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the server did not start; see {log}")
            time.sleep(0.5)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


# ------------------------------------------------------------------------------------------ the browser


def alerts(tab) -> list[str]:
    """The messages the tab shows (their icon's name dropped), but the page's hint to pick a model or images."""
    out = []
    for alert in tab.get_by_test_id("stAlert").all():
        text = " ".join(alert.inner_text().split())
        text = text.removeprefix("block ").removeprefix("error ")
        if not text.startswith(("Pick a model", "Add images", "Open an analysis file", "None of the images")):
            out.append(text[:200])
    return out


def _load_test_helpers() -> None:
    """tests/test_browser.py's Playwright helpers and the conftest it imports, loaded by path under their own
    names (the tests folder is no package; the project itself is installed)."""
    import importlib.util

    for name in ("conftest", "test_browser"):
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def usage(tab) -> str:
    """The sidebar's "Uploads use ... of ..." line."""
    found = tab.get_by_text("Uploads use", exact=False)
    return " ".join(found.first.inner_text().split()) if found.count() else "(no usage line)"


def open_uploads(tab, url: str) -> None:
    from test_browser import open_app, pick_model, script_run

    open_app(tab, url)
    pick_model(tab, MODEL)
    sidebar = tab.get_by_test_id("stSidebar")
    with script_run(tab):
        sidebar.get_by_test_id("stRadio").get_by_text("Upload by class", exact=True).click()


def upload_zip(tab, name: str, data: bytes) -> None:
    from test_browser import script_run

    with script_run(tab):
        tab.locator("[class*='st-key-class_files_zip_'] input[type='file']").set_input_files(
            {"name": name, "mimeType": "application/zip", "buffer": data})


def open_bundles(tab, url: str) -> None:
    from test_browser import open_app, script_run

    open_app(tab, url)
    with script_run(tab):
        tab.get_by_test_id("stSidebar").get_by_text("An analysis file", exact=True).click()


def upload_bundle(tab, name: str, data: bytes) -> None:
    from test_browser import script_run

    with script_run(tab):
        tab.locator("[class*='st-key-bundle_upload_'] input[type='file']").set_input_files(
            {"name": name, "mimeType": "application/zip", "buffer": data})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fill-mib", type=int, default=480, help="the budget-filling zip (0: skip the case)")
    parser.add_argument("--fill-sessions", type=int, default=4, help="sessions that each upload it")
    parser.add_argument("--after-close", type=float, default=0, help="seconds to wait after closing the tabs")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "hostile_memory_server.log")
    args = parser.parse_args()

    from playwright.sync_api import sync_playwright

    _load_test_helpers()
    from test_browser import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, new_tab

    gib_zips = [(f"gib{i}.zip", image_zip(1024, seed=i)) for i in range(3)]
    bundles = [("channels.senetviz.zip", channel_bomb()),
               ("expands.senetviz.zip", expansion_bomb(None)),
               ("lies.senetviz.zip", expansion_bomb(1))]
    print("files:", ", ".join(f"{n} {len(d) / 1e6:.2f} MB" for n, d in gib_zips + bundles))

    server = Server(args.log)
    pid = server.proc.pid
    rows: list[tuple[str, float, float, str]] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            contexts = []

            def tab_of() -> object:
                context = browser.new_context(viewport=VIEWPORT)
                contexts.append(context)
                return new_tab(context)

            first = tab_of()
            open_uploads(first, server.url)
            time.sleep(3)
            idle = status(pid)["VmRSS"]
            print(f"server pid {pid}: idle RSS {idle / 1e6:,.0f} MB (the app open on {MODEL}, nothing uploaded)")

            def case(name: str, run: Callable[[], str]) -> None:
                reset_peak(pid)
                t0 = time.perf_counter()
                said = run()
                mem = status(pid)
                rows.append((name, (mem["VmHWM"] - idle) / 1e6, (mem["VmRSS"] - idle) / 1e6, said))
                print(f"{name}: peak {rows[-1][1]:+,.0f} MB above idle, now {rows[-1][2]:+,.0f} MB "
                      f"({time.perf_counter() - t0:.0f} s); the page said: {said}", flush=True)

            def one_session() -> str:
                for name, data in gib_zips:
                    upload_zip(first, name, data)
                return " | ".join(alerts(first))

            def three_sessions() -> str:
                tabs = [tab_of() for _ in range(3)]
                for tab in tabs:
                    open_uploads(tab, server.url)
                refused = 0
                for name, data in gib_zips:
                    for tab in tabs:
                        upload_zip(tab, name, data)
                        refused += any(a.startswith(f"{name} was not added") for a in alerts(tab))
                return f"{refused} of 9 uploads refused; {usage(tabs[-1])}"

            def bundle_sessions() -> str:
                said = []
                for _ in range(2):
                    tab = tab_of()
                    open_bundles(tab, server.url)
                    for name, data in bundles:
                        upload_bundle(tab, name, data)
                        said.append(f"{name}: {(alerts(tab) or ['(no message)'])[-1]}")
                return " | ".join(said[:3])

            def filling() -> str:
                said = []
                for i in range(args.fill_sessions):
                    tab = tab_of()
                    open_uploads(tab, server.url)
                    upload_zip(tab, "fits.zip", image_zip(args.fill_mib, seed=10 + i, member_mib=16))
                    refusal = [a for a in alerts(tab) if "was not added" in a]
                    said.append(f"session {i + 1}: {(refusal or [usage(tab)])[-1]}")
                return " | ".join(said)

            case("zips, one session (3 x 1 GiB)", one_session)
            case("zips, three sessions (3 x 3 x 1 GiB)", three_sessions)
            case("bundles, two sessions (250M channels; 4 GiB honest; 4 GiB lying)", bundle_sessions)
            worst = max(r[1] for r in rows)
            if args.fill_mib:
                case(f"{args.fill_sessions} sessions each uploading a {args.fill_mib} MiB zip (legitimate, up to the "
                     f"budgets)", filling)
            for context in contexts:
                context.close()
            if args.after_close:
                time.sleep(args.after_close)
                print(f"{args.after_close:.0f} s after closing every tab: RSS "
                      f"{(status(pid)['VmRSS'] - idle) / 1e6:+,.0f} MB above idle")
                # Streamlit drops expired sessions only when it stores another: open and close one more tab.
                context = browser.new_context(viewport=VIEWPORT)
                open_uploads(new_tab(context), server.url)
                context.close()
                time.sleep(5)
                print(f"after one more tab opened and closed: RSS {(status(pid)['VmRSS'] - idle) / 1e6:+,.0f} MB "
                      "above idle")
            browser.close()
    finally:
        server.stop()
    print(f"\nworst hostile case: peak {worst:+,.0f} MB above idle (target < {TARGET_MB:,} MB): "
          f"{'PASS' if worst < TARGET_MB else 'FAIL'}")


if __name__ == "__main__":
    main()
