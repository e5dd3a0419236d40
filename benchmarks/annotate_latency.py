"""Click-to-redrawn-mask latency of ``medadapt annotate``, measured in headless Chromium.

The real server (``python -m medadapt annotate DATA``, LiteMedSAM: a 256-pixel model, on the CPU) runs in a
subprocess; selenium drives Debian's Chromium as ``tests/test_annotate_browser.py`` does (its helpers are
reused). On each image the user draws a box, then clicks ``--clicks`` times inside the object, then accepts.
Each latency is the page's own figure (the ``data-latency-ms`` attribute of the prompt canvas): from the
click to the redrawn mask, with the request, the run-length decoding and the canvas draw. The image is
encoded when it opens, so every click runs the decoder only. Two servers: ``--no-learn`` (the model as
loaded) and the default online learning, whose background worker trains on each accepted mask while the
user clicks on the next image.

    python benchmarks/annotate_latency.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from common import write_result  # noqa: E402
from conftest import disc_image  # noqa: E402
from test_annotate_browser import (  # noqa: E402
    CHROMEDRIVER,
    CHROMIUM,
    Server,
    accept,
    attr,
    bbox,
    click,
    drag_box,
    load,
    open_item,
)

IMAGES = {f"disc_{i}.png": dict(center=(60 + 12 * i, 80 + 20 * i), radius=28 + 3 * i, seed=10 + i) for i in range(4)}
OFFSETS = [(0, 0), (8, 4), (-8, -4), (4, -8), (-4, 8), (10, 0), (0, 10), (-10, 0), (0, -10), (6, 6)]


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,860"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)


def measure(folder: Path, truth: dict, learn: bool, clicks: int, think: float, online: list[str]) -> list[dict]:
    server = Server(folder, folder.parent / f"server_{'learn' if learn else 'nolearn'}.log",
                    args=(("--online", *online) if online else ()) if learn else ("--no-learn",))
    server.start()
    driver = browser()
    rows = []
    try:
        load(driver, server.url)
        for name, spec in IMAGES.items():
            open_item(driver, name)
            drag_box(driver, bbox(truth[name]))
            cy, cx = spec["center"]
            for dx, dy in OFFSETS[:clicks]:
                time.sleep(think)  # the user looks at the mask before the next click
                ms = click(driver, cx + dx, cy + dy)
                rows.append({"image": name, "ms": ms, "server_ms": float(attr(driver, "marks", "data-server-ms")),
                             "decode_ms": float(attr(driver, "marks", "data-decode-ms"))})
            accept(driver, name)
    finally:
        driver.quit()
        server.stop()
    return rows


def summary(rows: list[dict]) -> dict:
    v = np.asarray([r["ms"] for r in rows], float)
    return {"clicks": int(v.size), "median_ms": float(np.median(v)), "p90_ms": float(np.percentile(v, 90)),
            "max_ms": float(v.max()), "over_150": int((v > 150).sum()),
            "server_median_ms": float(np.median([r["server_ms"] for r in rows])),
            "decode_median_ms": float(np.median([r["decode_ms"] for r in rows]))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clicks", type=int, default=10, help="clicks per image (at most 10)")
    ap.add_argument("--think", type=float, nargs="+", default=[0.0, 1.5],
                    help="seconds the user looks before each click; one run per value (default 0 and 1.5)")
    ap.add_argument("--online", nargs="+", default=[], metavar="KEY=VALUE",
                    help="the learning server's settings (`medadapt annotate --online`), e.g. proposal_clicks=6")
    ap.add_argument("--experiment", default="annotate_latency",
                    help="the report's name under benchmarks/results/synthetic/")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for think in args.think:
            for learn in (False, True):
                folder = Path(tmp) / f"{'learn' if learn else 'nolearn'}_{think:g}" / "images"
                folder.mkdir(parents=True)
                truth = {}
                for name, spec in IMAGES.items():
                    image, mask = disc_image(**spec)
                    Image.fromarray(image.clip(0, 255).astype(np.uint8)).save(folder / name)
                    truth[name] = mask
                rows = measure(folder, truth, learn, min(args.clicks, len(OFFSETS)), think, args.online)
                key = f"{'online learning' if learn else 'no learning'}, clicks {think:g} s apart"
                results[key] = {"think_s": think, "learn": learn, "summary": summary(rows),
                                "clicks": rows}
                print(key, results[key]["summary"], flush=True)
    lines = [
        f"Headless Chromium drives `medadapt annotate` (LiteMedSAM, 256-pixel input, CPU): on each of "
        f"{len(IMAGES)} images (240 x 180) a box, then {args.clicks} positive clicks inside the object, "
        "at once or some seconds apart (a user who looks at the mask), then accept. Latency: from the click to "
        "the redrawn mask, as the page measures it (`performance.now()` around the request, the run-length decoding and the canvas draw). With online learning the background "
        "worker trains on each accepted mask between the user's clicks (a step starts after a second without a "
        "request; while one runs, the page's requests use the other core). Server and decoder: the medians of "
        "the server's own figures for the same clicks (the prompt call from entry to answer, waiting for the "
        "model included; the decoder call alone); the rest of a click is HTTP, the page and the browser."
        + (f" The learning server runs with `--online {' '.join(args.online)}`." if args.online else ""), "",
        "| server | clicks | median (ms) | 90th percentile (ms) | slowest (ms) | clicks over 150 ms "
        "| server median (ms) | decoder median (ms) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for key, r in results.items():
        s = r["summary"]
        lines.append(f"| {key} | {s['clicks']} | {s['median_ms']:.0f} | {s['p90_ms']:.0f} | {s['max_ms']:.0f} "
                     f"| {s['over_150']} | {s['server_median_ms']:.0f} | {s['decode_median_ms']:.0f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.no_write:
        write_result("synthetic", args.experiment, {"clicks_per_image": args.clicks, "online": args.online,
                                                    "results": results}, text,
                     title="Annotation app: click to redrawn mask, in the browser")


if __name__ == "__main__":
    main()
