"""/livez reflects the main loop's heartbeat (issue 12, break 10): a real Daemon, run in this
process on real directories with a real worker, is wedged by holding the lock its loop takes on
every turn. The loop stops turning, as it would on a blocking open() or a hung filesystem;
/livez turns 503 and says for how long, /healthz stays 200, and once the loop runs again
/livez is 200 again and SIGTERM stops the daemon cleanly.
"""

from __future__ import annotations

import signal
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

from ckptwatch.config import load_config
from ckptwatch.daemon.app import Daemon
from tests.tools import wait_until

LIVENESS_TIMEOUT = 1.0


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def _config(tmp_path: Path) -> Path:
    (tmp_path / "run").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(
        f"""
[daemon]
listen = "127.0.0.1:0"
state_dir = "{tmp_path / "state"}"
log_format = "json"
liveness_timeout = {LIVENESS_TIMEOUT}

[worker]
devices = ["cpu"]

[[watch]]
name = "run"
path = "{tmp_path / "run"}"
"""
    )
    return path


def test_livez_fails_while_the_main_loop_is_wedged_and_healthz_does_not(tmp_path: Path):
    daemon = Daemon(load_config(str(_config(tmp_path))))
    seen: dict[str, tuple[int, str]] = {}
    errors: list[BaseException] = []

    def probe() -> None:
        try:
            wait_until(lambda: getattr(daemon, "http", None) is not None and daemon.http._server, what="http started")
            url = daemon.http.url
            seen["before"] = wait_until(lambda: (r := _get(url + "/livez"))[0] == 200 and r, what="/livez 200")
            with daemon.lock:  # every turn of the loop takes this lock: the loop is stuck until we let go
                time.sleep(LIVENESS_TIMEOUT + 1.5)
                seen["wedged"] = _get(url + "/livez")
                seen["healthz"] = _get(url + "/healthz")
            seen["after"] = wait_until(lambda: (r := _get(url + "/livez"))[0] == 200 and r, 10, what="/livez again")
        except BaseException as e:
            errors.append(e)
        finally:
            daemon._on_signal(signal.SIGTERM, None)  # what the SIGTERM handler does

    handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    thread = threading.Thread(target=probe, name="probe")
    thread.start()
    try:
        code = daemon.run()  # signal handlers are installed from the main thread only
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)
        thread.join(30)
    assert not errors, errors
    assert code == 0
    assert seen["before"] == (200, "ok\n")
    status, body = seen["wedged"]
    assert status == 503, seen
    assert body.startswith("main loop stalled: no turn for ") and body.endswith(" s (liveness_timeout 1 s)\n"), body
    stalled_for = float(body.split("no turn for ")[1].split(" s")[0])
    assert LIVENESS_TIMEOUT < stalled_for < LIVENESS_TIMEOUT + 30
    assert seen["healthz"] == (200, "ok\n")
    assert seen["after"] == (200, "ok\n")
