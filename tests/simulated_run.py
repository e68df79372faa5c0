"""A training run simulated with numpy, for fast tests of the drift rules against a run's history.

    simulate(saves, optimizer="adam", warmup=..., seed=...) -> [(step, {name: array})]

Shaped like what the field notes measured on real runs: biases, BatchNorm offsets and moving
means start at zero; a learning-rate warm-up from 0 leaves the first step's weights unchanged;
Adam moves every element by about lr per step, momentum SGD builds up speed; moving statistics
follow the data with momentum 0.99. Names are TF2 object-graph keys, with the optimizer's
step counter, so the engine sees training steps.
"""

from __future__ import annotations

import numpy as np

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
KERNEL = "model/layer_with_weights-0/kernel" + SUFFIX
BIAS = "model/layer_with_weights-0/bias" + SUFFIX
GAMMA = "model/layer_with_weights-1/gamma" + SUFFIX
BETA = "model/layer_with_weights-1/beta" + SUFFIX
MEAN = "model/layer_with_weights-1/moving_mean" + SUFFIX
VARIANCE = "model/layer_with_weights-1/moving_variance" + SUFFIX
HIDDEN = "model/layer_with_weights-2/kernel" + SUFFIX
HIDDEN_BIAS = "model/layer_with_weights-2/bias" + SUFFIX
OUT = "model/layer_with_weights-3/kernel" + SUFFIX
OUT_BIAS = "model/layer_with_weights-3/bias" + SUFFIX
ITERATIONS = "optimizer/iterations" + SUFFIX
SAVE_COUNTER = "save_counter" + SUFFIX
TRAINABLE = (KERNEL, BIAS, GAMMA, BETA, HIDDEN, HIDDEN_BIAS, OUT, OUT_BIAS)


def _initial(rng: np.random.Generator) -> dict[str, np.ndarray]:
    def glorot(a: int, b: int) -> np.ndarray:
        return rng.uniform(-1, 1, (a, b)) * np.sqrt(6 / (a + b))

    return {
        KERNEL: glorot(48, 32),
        BIAS: np.zeros(32),
        GAMMA: np.ones(32),
        BETA: np.zeros(32),
        MEAN: np.zeros(32),
        VARIANCE: np.ones(32),
        HIDDEN: glorot(32, 32),
        HIDDEN_BIAS: np.zeros(32),
        OUT: glorot(32, 4),
        OUT_BIAS: np.zeros(4),
    }


def simulate(
    saves: list[int],
    optimizer: str = "adam",
    lr: float = 1e-3,
    warmup: int = 0,
    seed: int = 0,
    data_mean: float = 0.5,
) -> list[tuple[int, dict[str, np.ndarray]]]:
    """Checkpoints at the given optimizer steps (step 0: before training)."""
    rng = np.random.default_rng(seed)
    w = _initial(rng)
    direction = {k: rng.normal(size=w[k].shape) for k in TRAINABLE}
    m = {k: np.zeros_like(w[k]) for k in TRAINABLE}
    v = {k: np.zeros_like(w[k]) for k in TRAINABLE}
    true_mean = data_mean * rng.normal(size=32)
    true_var = rng.uniform(0.5, 2.0, 32)
    out, save_set = [], set(saves)
    for step in range(max(saves) + 1):
        if step in save_set:
            snap = {k: a.astype(np.float32) for k, a in w.items()}
            snap[ITERATIONS] = np.array(step, np.int64)
            snap[SAVE_COUNTER] = np.array(len(out) + 1, np.int64)
            out.append((step, snap))
        rate = lr * (step / warmup if warmup and step < warmup else 1.0)
        decay = 1.0 / (1.0 + step / 200)  # the gradient's steady part fades as the loss falls
        for k in TRAINABLE:
            g = 0.5 * decay * direction[k] + rng.normal(size=w[k].shape)
            if optimizer == "adam":
                m[k] = 0.9 * m[k] + 0.1 * g
                v[k] = 0.999 * v[k] + 0.001 * g * g
                mhat, vhat = m[k] / (1 - 0.9 ** (step + 1)), v[k] / (1 - 0.999 ** (step + 1))
                w[k] = w[k] - rate * mhat / (np.sqrt(vhat) + 1e-7)
            else:  # momentum SGD
                m[k] = 0.9 * m[k] + g * 0.1
                w[k] = w[k] - rate * m[k]
        batch_mean = true_mean + 0.3 * rng.normal(size=32)
        batch_var = true_var * (1 + 0.1 * rng.normal(size=32))
        w[MEAN] = 0.99 * w[MEAN] + 0.01 * batch_mean
        w[VARIANCE] = 0.99 * w[VARIANCE] + 0.01 * batch_var
    return out


def verify_run(checkpoints, policy=None, replace=None, history=None):
    """Verify checkpoint after checkpoint the way the daemon's worker does: previous = the last one
    that passed (pass or warn), the history extended by each one that passed and noting each one
    that failed a drift check, a fingerprint of every checkpoint (what the continuation rule
    compares with). `replace` maps a position to the arrays verified there instead (a fault).
    Returns ([(step, report)], history)."""
    import tempfile

    from ckptwatch.formats.memory import ArraySource
    from ckptwatch.policy import Policy
    from ckptwatch.verify.continues import continues_findings, next_history
    from ckptwatch.verify.engine import Engine, Options
    from ckptwatch.verify.fingerprint import write_fingerprint
    from ckptwatch.verify.history import History

    policy = policy or Policy()
    history = history if history is not None else History.empty()
    previous, out = None, []
    with tempfile.TemporaryDirectory() as prints_dir:
        for i, (step, arrays) in enumerate(checkpoints):
            arrays = (replace or {}).get(i, arrays)
            cand = ArraySource(arrays, f"ckpt-{step}", step=step)
            prev = ArraySource(previous[1], previous[2], step=previous[0]) if previous else None
            report, prints = Engine(policy, Options(threads=1, history=history, sketch=True)).run(cand, prev)
            report.references = {"previous": previous[2] if previous else None, "golden": None}
            report.add_findings(continues_findings(history, report, prints, []))
            fingerprint = f"{prints_dir}/{i}.fp.json"
            write_fingerprint(fingerprint, report.checkpoint, prints)
            written = next_history(history, report, fingerprint, policy.history_window, [])
            history = written if written is not None else history
            out.append((step, report))
            if report.verdict in ("pass", "warn"):
                previous = (step, arrays, f"ckpt-{step}")
    return out, history
