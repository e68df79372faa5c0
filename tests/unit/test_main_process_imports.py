"""The daemon's main process loads what the code says it loads, and nothing heavy.

Main process = what `ckptwatch watch` imports before it starts workers: ckptwatch.daemon.app,
ckptwatch.cli and ckptwatch.config. It may load the standard library, pydantic, click,
prometheus_client, structlog, watchdog and crc32c (an index header is read in pure Python).
Everything numeric (numpy, ml_dtypes, blake3, numba), h5py and TensorFlow/Keras belong in the
worker processes. Checked in a fresh interpreter: this test process has loaded them already.
"""

from __future__ import annotations

import json
import subprocess
import sys

MAIN_PROCESS = ("ckptwatch.daemon.app", "ckptwatch.cli", "ckptwatch.config")
FORBIDDEN = ("numpy", "ml_dtypes", "blake3", "numba", "llvmlite", "h5py", "tensorflow", "keras", "jax", "torch")
ALLOWED = {
    "pydantic", "pydantic_core", "annotated_types", "typing_extensions", "typing_inspection",  # pydantic
    "click", "prometheus_client", "structlog", "watchdog", "crc32c",
    "cramjam",  # Snappy, imported when an index header's block is compressed (a Rust extension, no numpy)
    "rich", "pygments", "attr",  # structlog's pretty console output, used when installed (keras needs rich)
}  # fmt: skip

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(sys.modules)))
"""


def _loaded() -> list[str]:
    out = subprocess.run(
        [sys.executable, "-c", PROBE, *MAIN_PROCESS], capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout)


def test_main_process_loads_nothing_heavy() -> None:
    loaded = _loaded()
    heavy = sorted(m for m in loaded if m.split(".")[0] in FORBIDDEN)
    tops = sorted({m.split(".")[0] for m in heavy})
    assert not heavy, f"the main process imports {', '.join(tops)}: {heavy[:10]}"


def test_main_process_loads_only_what_is_allowed() -> None:
    """Besides the standard library, only the allowed packages (and what they need)."""
    tops = {m.split(".")[0] for m in _loaded()} - ALLOWED - set(sys.stdlib_module_names)
    other = sorted(t for t in tops if t != "ckptwatch" and not t.startswith("_"))
    assert not other, f"the main process imports packages beyond the allowed ones: {other}"
