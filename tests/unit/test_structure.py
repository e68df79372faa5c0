"""Structure of a candidate against a reference: renames, added layers, reshapes, re-types."""

from __future__ import annotations

from ckptwatch.formats.base import TensorInfo
from ckptwatch.verify.structure import compare, detect_renames

ATTR = "/.ATTRIBUTES/VARIABLE_VALUE"


def infos(spec: dict[str, tuple[int, ...]], dtype: str = "float32", suffix: str = "") -> list[TensorInfo]:
    return [TensorInfo(name + suffix, dtype, shape, 4, display=name) for name, shape in spec.items()]


TF1 = {
    "dense/kernel": (8, 16),
    "dense/bias": (16,),
    "dense_1/kernel": (16, 16),
    "dense_1/bias": (16,),
    "out/kernel": (16, 4),
    "out/bias": (4,),
}


def scoped(scope: str, spec: dict = TF1) -> dict[str, tuple[int, ...]]:
    return {f"{scope}/{k}": v for k, v in spec.items()}


def checks(result) -> list[tuple[str, str | None]]:
    return sorted((f.check, f.tensor) for f in result.findings)


def test_tf1_scope_rename_proposes_the_prefix_mapping() -> None:
    ref, cand = infos(scoped("model_scope")), infos(scoped("different_model_scope"))
    (rename,) = detect_renames(ref, cand)
    assert (rename.old_prefix, rename.new_prefix) == ("model_scope/", "different_model_scope/")
    assert sorted(rename.pairs) == sorted((f"model_scope/{k}", f"different_model_scope/{k}") for k in TF1)

    result = compare(cand, ref, "golden")
    assert [f.check for f in result.findings] == ["structure.renamed"]
    (f,) = result.findings
    assert f.severity == "fail" and f.reference == "golden"
    assert "'model_scope/' -> 'different_model_scope/'" in f.message
    assert "6 tensor(s)" in f.message
    assert f.tensor.startswith("different_model_scope/")
    # the renamed tensors are paired, so their values can still be compared
    assert result.pairs == {f"different_model_scope/{k}": f"model_scope/{k}" for k in TF1}


def test_equal_shapes_do_not_cross_pair() -> None:
    """dense/bias and dense_1/bias have the same shape: each must pair with its own rename."""
    (rename,) = detect_renames(infos(scoped("a")), infos(scoped("b")))
    assert all(old.split("/", 1)[1] == new.split("/", 1)[1] for old, new in rename.pairs)


def test_tf1_scope_added_at_the_root() -> None:
    ref, cand = infos(TF1), infos(scoped("tower_0"))
    (rename,) = detect_renames(ref, cand)
    assert (rename.old_prefix, rename.new_prefix) == ("", "tower_0/")
    assert len(rename.pairs) == len(TF1)
    result = compare(cand, ref, "previous")
    assert [f.check for f in result.findings] == ["structure.renamed"]
    assert "(root)" in result.findings[0].message


def test_two_scopes_renamed_at_once() -> None:
    ref = infos({**scoped("encoder", {"w": (4, 8), "b": (8,)}), **scoped("decoder", {"w": (8, 2), "b": (2,)})})
    cand = infos({**scoped("enc", {"w": (4, 8), "b": (8,)}), **scoped("dec", {"w": (8, 2), "b": (2,)})})
    renames = detect_renames(ref, cand)
    assert sorted((r.old_prefix, r.new_prefix) for r in renames) == [("decoder/", "dec/"), ("encoder/", "enc/")]
    result = compare(cand, ref, "previous")
    assert [f.check for f in result.findings] == ["structure.renamed", "structure.renamed"]
    assert result.pairs == {"enc/w": "encoder/w", "enc/b": "encoder/b", "dec/w": "decoder/w", "dec/b": "decoder/b"}


def test_tf2_attribute_rename() -> None:
    head = {"net/head/w": (16, 4), "net/head/b": (4,)}
    ref = infos({"net/encoder/w": (8, 16), "net/encoder/b": (16,), **head}, suffix=ATTR)
    cand = infos({"net/enc/w": (8, 16), "net/enc/b": (16,), **head}, suffix=ATTR)
    result = compare(cand, ref, "previous")
    (f,) = result.findings
    assert f.check == "structure.renamed"
    assert "'net/encoder/' -> 'net/enc/'" in f.message
    assert f.tensor == "net/enc/w" + ATTR or f.tensor == "net/enc/b" + ATTR
    assert result.pairs["net/enc/w" + ATTR] == "net/encoder/w" + ATTR
    assert result.pairs["net/head/w" + ATTR] == "net/head/w" + ATTR
    assert len(result.pairs) == 4


def test_layer_added_is_unexpected_only() -> None:
    ref = infos(scoped("model"))
    cand = infos({**scoped("model"), "model/extra/kernel": (4, 4), "model/extra/bias": (4,)})
    assert detect_renames([], [t for t in cand if "extra" in t.name]) == []
    result = compare(cand, ref, "golden")
    assert checks(result) == [
        ("structure.unexpected", "model/extra/bias"),
        ("structure.unexpected", "model/extra/kernel"),
    ]
    assert {f.severity for f in result.findings} == {"warn"}
    assert len(result.pairs) == len(TF1)
    strict = compare(cand, ref, "golden", unexpected_severity="fail")
    assert {f.severity for f in strict.findings} == {"fail"}


def test_layer_added_with_a_shape_no_missing_tensor_has_is_not_a_rename() -> None:
    """A layer replaced by a different one (no matching shapes): missing + unexpected, no rename."""
    ref = infos({"m/conv/kernel": (3, 3, 8), "m/conv/bias": (8,), "m/out/kernel": (8, 2)})
    cand = infos({"m/attn/query": (8, 5, 7), "m/attn/key": (8, 5, 9), "m/out/kernel": (8, 2)})
    result = compare(cand, ref, "previous")
    assert checks(result) == [
        ("structure.missing", "m/conv/bias"),
        ("structure.missing", "m/conv/kernel"),
        ("structure.unexpected", "m/attn/key"),
        ("structure.unexpected", "m/attn/query"),
    ]
    assert next(f for f in result.findings if f.check == "structure.missing").severity == "fail"
    assert result.pairs == {"m/out/kernel": "m/out/kernel"}


def test_layer_removed_is_missing() -> None:
    ref = infos({**scoped("model"), "model/extra/kernel": (4, 4)})
    result = compare(infos(scoped("model")), ref, "previous")
    assert checks(result) == [("structure.missing", "model/extra/kernel")]


def test_shape_change() -> None:
    ref = infos(scoped("model"))
    cand = infos({**scoped("model"), "model/out/kernel": (16, 5), "model/out/bias": (5,)})
    result = compare(cand, ref, "previous")
    assert checks(result) == [("structure.shape", "model/out/bias"), ("structure.shape", "model/out/kernel")]
    f = next(f for f in result.findings if f.tensor == "model/out/kernel")
    assert f.severity == "fail" and "[16, 5]" in f.message and "[16, 4]" in f.message
    assert "model/out/kernel" not in result.pairs  # never compared element-wise


def test_dtype_change() -> None:
    ref = infos(scoped("model"))
    cand = [
        TensorInfo(t.name, "float16" if t.name == "model/dense/kernel" else t.dtype, t.shape, 4, display=t.name)
        for t in ref
    ]
    result = compare(cand, ref, "golden")
    assert checks(result) == [("structure.dtype", "model/dense/kernel")]
    f = result.findings[0]
    assert "float16" in f.message and "float32" in f.message and f.reference == "golden"
    assert "model/dense/kernel" not in result.pairs


def test_identical_structure_has_no_findings() -> None:
    ref = infos(scoped("model"))
    result = compare(list(reversed(ref)), ref, "previous")
    assert result.findings == [] and result.renames == []
    assert result.pairs == {t.name: t.name for t in ref}


def test_rename_needs_equal_dtypes() -> None:
    ref = infos(scoped("a", {"w": (4, 4)}))
    cand = infos(scoped("b", {"w": (4, 4)}), dtype="float16")
    result = compare(cand, ref, "previous")
    assert checks(result) == [("structure.missing", "a/w"), ("structure.unexpected", "b/w")]
