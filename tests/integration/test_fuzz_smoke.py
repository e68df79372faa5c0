"""A short, fixed-seed slice of the fuzz campaign (`make fuzz`, bench/fuzz/) in `make test`:
seeds written with TensorFlow and Keras, a few hundred mutated inputs across every reader and
parser, each in a worker process under a time limit. None may end in an internal error (an
exception other than ckptwatch's own, a dead worker) or run past its time limit."""

from __future__ import annotations

import pytest

from bench.fuzz import seeds as seeding
from bench.fuzz.harness import Campaign, table

CASES = 450  # ~10 s of cases on two cores, after ~10 s of seeds
TIME_LIMIT = 10.0  # seconds per case: a loaded CI machine is slow; a real hang never ends


@pytest.mark.slow
def test_fuzz_smoke(tmp_path_factory) -> None:
    seeds = seeding.ensure(str(tmp_path_factory.mktemp("fuzz") / "seeds"))
    out = tmp_path_factory.mktemp("fuzz-out")
    summary = Campaign(seeds, str(out), seed=0, jobs=2, timeout=TIME_LIMIT, log=lambda _: None).run(45, CASES)
    shown = table(summary)
    assert sum(f["cases"] for f in summary.values()) >= 200, shown
    assert all(f["cases"] > 0 for f in summary.values()), shown
    internal = {name: f["internal"] for name, f in summary.items() if f["internal"]}
    assert not internal, f"{internal} (inputs under {out}/crashes)\n{shown}"
    assert not [name for name, f in summary.items() if f["hangs"]], f"hangs (inputs under {out}/crashes)\n{shown}"
