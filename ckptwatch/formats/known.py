"""Names people know: the Keras layer name and variable of a stored tensor, where the file
says them, else its object path without Keras' internals.

    bundle_names(paths)                object-graph paths (object_graph.key_paths) -> {key: name}
    keras_archive_names(config, keys)  `.keras` config.json + `layers/dense_1/vars/0` -> {key: name}
    legacy_h5_name(key)                `model_weights/hidden/hidden/kernel:0` -> `hidden/kernel`

What each format holds (measured, TF 2.21 / Keras 3.15):
- TF bundles written by `tf.train.Checkpoint(model=m)` (Keras 3) key a layer's variables by its
  position (`model/_functional/_operations/2/_kernel`); the layer's `name` is a Python string,
  not a trackable object, so it is nowhere in the file. The name shown is the path with Keras'
  internals folded: `model/operations[2]/kernel` (`model._operations[2]`,
  the input layer being 0). Keras 3 optimizer state
  (`optimizer/_variables/7`) is named after the variable it belongs to, by its position in the
  optimizer's `_trainable_variables` and slot lists: `model/operations[2]/kernel [momentum]`.
- `.keras` archives: config.json lists the layers in order with their names and classes;
  model.weights.h5 names each layer's group after its class (`dense`, `dense_1`, ...) in the same
  order, so the two line up: `layers/dense_1/vars/0` -> `logits/kernel`.
- Legacy Keras 2 `.h5`: the layer name is in the key already.
- `.weights.h5` alone: class-based group names only; nothing better to show.
"""

from __future__ import annotations

import re

_OPTIMIZER_EDGES = {"optimizer", "_optimizer"}
_LAYER_LISTS = {"_operations", "_layers", "layers", "_self_tracked_trackables"}
_FOLDED = {"_functional"}
_OPTIMIZER_LISTS = {"_variables", "_trainable_variables", "_trainable_variables_indices"}

# Keras 3 layer classes: the order `build` creates their variables in (what `vars/N` means).
KERAS_VARIABLES = {
    "Dense": ("kernel", "bias"),
    "EinsumDense": ("kernel", "bias"),
    "Conv1D": ("kernel", "bias"),
    "Conv2D": ("kernel", "bias"),
    "Conv3D": ("kernel", "bias"),
    "Conv1DTranspose": ("kernel", "bias"),
    "Conv2DTranspose": ("kernel", "bias"),
    "Conv3DTranspose": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
    "GroupNormalization": ("gamma", "beta"),
}


def _leaf(edge: str) -> str:
    return edge[1:] if edge.startswith("_") and len(edge) > 1 and not edge[1:].isdigit() else edge


def fold(path: tuple[str, ...]) -> str:
    """An object path without Keras' internals: `model/_functional/_operations/2/_kernel` ->
    `model/operations[2]/kernel`; a TF1/Keras 2 slot `(..., kernel, [slot m])` -> `.../kernel [m]`."""
    out: list[str] = []
    slot = ""
    i = 0
    while i < len(path):
        edge = path[i]
        if edge.startswith("[slot ") and edge.endswith("]"):
            slot = f" [{edge[6:-1]}]"
        elif edge in _FOLDED:
            pass
        elif edge in _LAYER_LISTS and i + 1 < len(path) and path[i + 1].isdigit():
            out.append(f"{'operations' if edge == '_operations' else 'layers'}[{path[i + 1]}]")
            i += 1
        else:
            out.append(_leaf(edge))
        i += 1
    return "/".join(out) + slot


def _singular(word: str) -> str:
    word = word.lstrip("_")
    if word.endswith("ies"):
        return word[:-3] + "y"
    return word[:-1] if word.endswith("s") and not word.endswith("ss") else word


def bundle_names(paths: dict[str, list[tuple[str, ...]]], preferred: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """checkpoint key -> the name to show people. `paths`: every object path to each key
    (object_graph.key_paths); `preferred`: the path chosen for it (object_graph.preferred_path)."""
    names = {key: fold(path) for key, path in preferred.items()}
    trained: dict[tuple[tuple[str, ...], str], str] = {}  # (optimizer path, index) -> the variable's name
    for key, ps in paths.items():
        for p in ps:
            if len(p) >= 3 and p[-3] in _OPTIMIZER_EDGES and p[-2] == "_trainable_variables" and key in names:
                trained[(p[:-2], p[-1])] = names[key]
    if not trained:
        return names
    for key, ps in paths.items():
        for p in ps:
            if len(p) >= 3 and p[-3] in _OPTIMIZER_EDGES and p[-2] not in _OPTIMIZER_LISTS and p[-1].isdigit():
                owner = trained.get((p[:-2], p[-1]))
                if owner:
                    names[key] = f"{owner} [{_singular(p[-2])}]"
                    break
    return names


def to_snake_case(name: str) -> str:
    """Keras' naming.to_snake_case: the group name `.weights.h5` gives a layer of a class."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    name = re.sub("([a-z])([A-Z])", r"\1_\2", name)
    return name.lower()


def _layers_of(config: object) -> list[dict]:
    """The layer entries of a Keras model config (functional or Sequential), else []."""
    if not isinstance(config, dict):
        return []
    inner = config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    return [entry for entry in layers if isinstance(entry, dict)] if isinstance(layers, list) else []


def keras_archive_names(config: object, keys: list[str]) -> dict[str, str]:
    """`layers/<class>[_k]/vars/N` keys of a `.keras` archive -> `<layer name>/<variable>`, from
    config.json (parsed JSON; nothing is deserialized). Keys it cannot place keep no name."""
    groups: dict[str, tuple[str, str]] = {}  # h5 group -> (layer name, class)
    used: dict[str, int] = {}
    for entry in _layers_of(config):
        cls = entry.get("class_name")
        layer_config = entry.get("config")
        name = layer_config.get("name") if isinstance(layer_config, dict) else None
        if not isinstance(cls, str) or not isinstance(name, str):
            continue
        snake = to_snake_case(cls)
        if snake in used:
            used[snake] += 1
            group = f"{snake}_{used[snake]}"
        else:
            used[snake] = 0
            group = snake
        groups[group] = (name, cls)
    out: dict[str, str] = {}
    for key in keys:
        m = re.fullmatch(r"layers/([^/]+)/vars/(\d+)", key)
        if not m or m[1] not in groups:
            continue
        layer, cls = groups[m[1]]
        index = int(m[2])
        variables = KERAS_VARIABLES.get(cls, ())
        if cls == "BatchNormalization":
            variables = _batch_norm_variables(entry_config(config, layer))
        out[key] = f"{layer}/{variables[index]}" if index < len(variables) else f"{layer}/vars/{index}"
    return out


def entry_config(config: object, layer: str) -> dict:
    for entry in _layers_of(config):
        c = entry.get("config")
        if isinstance(c, dict) and c.get("name") == layer:
            return c
    return {}


def _batch_norm_variables(config: dict) -> tuple[str, ...]:
    scale, center = config.get("scale", True) is not False, config.get("center", True) is not False
    return (*(("gamma",) if scale else ()), *(("beta",) if center else ()), "moving_mean", "moving_variance")


_LEGACY_SLOT = re.compile(r"^optimizer_weights/(?P<opt>[^/]+)/(?P<rest>.+)/(?P<slot>[^/]+)$")


def legacy_h5_name(key: str) -> str:
    """Legacy Keras 2 `.h5` keys: `model_weights/hidden/hidden/kernel:0` -> `hidden/kernel`;
    `optimizer_weights/Adam/hidden/kernel/m:0` -> `hidden/kernel [Adam m]`; else ""."""
    base = key.removesuffix(":0")
    if base.startswith("model_weights/"):
        parts = base.split("/")[1:]
        if len(parts) >= 3 and parts[0] == parts[1]:
            parts = parts[1:]
        return "/".join(parts)
    m = _LEGACY_SLOT.match(base)
    if m and "/" in m["rest"]:
        return f"{m['rest']} [{m['opt']} {m['slot']}]"
    return ""
