"""Redraw images/tensorboard.png: what TensorBoard shows of a run, taken in a headless Chromium.

    make demo && python images/screenshot_tensorboard.py      # or --logdir JOB/tensorboard

Starts TensorBoard on the run's logs, opens its scalars (losses, learning rate, throughput) and its
TEXT tab (the fill-mask table) in Chromium without a screen, and puts the two pictures side by side.
Needs Chromium (Debian: apt install chromium) and Pillow (installed with matplotlib).
"""
import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEWS = {  # TensorBoard's own dashboards, as their URLs name them
    "scalars": "#scalars&_smoothingWeight=0&tagFilter=%5E(train%2Floss%7Cval%2Floss%7Clr%7Cthroughput%2Ftokens_per_sec)%24",
    "fill-mask table": "#text",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise SystemExit(f"error: TensorBoard did not answer at {url} within {seconds:.0f} s")
            time.sleep(0.5)


def screenshot(browser: str, url: str, path: str, width: int, height: int) -> None:
    """One page, after its scripts have had `--virtual-time-budget` to fetch and draw the data."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=20000", f"--screenshot={path}", url],
                       check=True, capture_output=True, timeout=180)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--logdir", default="runs/demo/job/tensorboard",
                   help="a run's TensorBoard directory (default: make demo's, runs/demo/job/tensorboard)")
    p.add_argument("--output", default="images/tensorboard.png", help="(default: %(default)s)")
    p.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser")
                   or shutil.which("google-chrome"), help="Chromium or Chrome (default: found on PATH)")
    p.add_argument("--width", type=int, default=1100, help="pixels of each view (default: %(default)s)")
    p.add_argument("--height", type=int, default=740, help="(default: %(default)s)")
    args = p.parse_args()
    os.chdir(REPO)  # relative paths are the repository's, and TensorBoard shows the log directory as given
    if not args.browser:
        sys.exit("error: no Chromium or Chrome found; install one (Debian: apt install chromium) or pass --browser")
    if not os.path.isdir(args.logdir) or not os.listdir(args.logdir):
        sys.exit(f"error: no TensorBoard logs in {args.logdir}; run `make demo` first or pass --logdir")
    port = free_port()
    tensorboard = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    server = subprocess.Popen([tensorboard, "--logdir", args.logdir, "--host", "127.0.0.1", "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}/"
        wait_for(base + "data/runs")
        with tempfile.TemporaryDirectory() as tmp:
            shots = []
            for i, fragment in enumerate(VIEWS.values()):
                shots.append(os.path.join(tmp, f"{i}.png"))
                screenshot(args.browser, base + fragment, shots[-1], args.width, args.height)
            images = [Image.open(s).convert("RGB") for s in shots]
            joined = Image.new("RGB", (sum(i.width for i in images), max(i.height for i in images)), "white")
            x = 0
            for image in images:
                joined.paste(image, (x, 0))
                x += image.width
            joined.save(args.output, optimize=True)
    finally:
        server.terminate()
        server.wait()
    print(f"wrote {args.output} ({', '.join(VIEWS)}) from {args.logdir}")


if __name__ == "__main__":
    main()
