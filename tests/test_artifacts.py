"""artifacts.py: the artifact record, its integrity check, and how many val flips flip-aware quantization allows."""

import numpy as np
import pytest

from regnas.artifacts import _QuantSearch, verify_artifact
from regnas.builddir import ArtifactRecord
from regnas.errors import RegnasError
from regnas.flips import lower_bound, upper_bound
from regnas.io import sha256_file


def _search(n):
    labels = np.zeros(n, dtype=np.int64)
    return _QuantSearch(None, None, "int8", ["onnxruntime"], (np.zeros((n, 1)), labels, labels))


@pytest.mark.parametrize("n,expected", [(5000, 4), (10000, 12)])
def test_allowed_val_flips_are_the_most_that_still_pass_the_check(n, expected):
    allowed = _search(n).allowed_flips(0.002)
    assert upper_bound(allowed, n, 0.95) <= 0.002 < upper_bound(allowed + 1, n, 0.95) and allowed == expected


@pytest.mark.parametrize("configurations", [5, 18])
def test_judging_many_configurations_on_one_val_asks_more_of_each(configurations):
    """Bonferroni: each of m configurations at 1 - 0.05/m, so the one kept is within the limit at 95% over all of them."""
    n, confidence = 5000, 1 - 0.05 / configurations
    allowed = _search(n).allowed_flips(0.002, configurations)
    assert upper_bound(allowed, n, confidence) <= 0.002 < upper_bound(allowed + 1, n, confidence)
    assert allowed < _search(n).allowed_flips(0.002)


def test_a_val_too_small_for_the_corrected_bound_keeps_the_checks_own():
    n = 2500  # 0 flips pass at 95%, none at 99.7%
    assert upper_bound(0, n, 1 - 0.05 / 18) > 0.002 >= upper_bound(0, n, 0.95)
    assert upper_bound(1, n, 0.95) <= 0.002 < upper_bound(2, n, 0.95)  # the check's own bar allows one flip
    assert _search(n).allowed_flips(0.002, 18) == _search(n).allowed_flips(0.002) == 1


def test_on_a_small_val_split_one_flip_is_noise_not_a_failure():
    """269 digits images cannot show 0.2% even at 0 flips: allow what the check would not call `failed`."""
    n = 269
    assert upper_bound(0, n, 0.95) > 0.002
    allowed = _search(n).allowed_flips(0.002)
    assert lower_bound(allowed, n, 0.95) <= 0.002 < lower_bound(allowed + 1, n, 0.95)
    assert allowed == 2 == _search(n).allowed_flips(0.002, 18)


def _artifact(tmp_path, **kw):
    (tmp_path / "phone").mkdir(exist_ok=True)
    path = tmp_path / "phone" / "onnx-int8.onnx"
    path.write_bytes(b"model")
    side = tmp_path / "phone" / "onnx-int8.onnx.json"
    side.write_text("{}")
    fields = dict(target="phone", format="onnx", precision="int8", path="phone/onnx-int8.onnx", runtime="onnxruntime", status="ok")
    return ArtifactRecord(**{**fields, "sha256": sha256_file(path), "companions": {side.name: sha256_file(side)}, **kw}), path, side


def test_verify_accepts_the_recorded_bytes_and_names_what_changed(tmp_path):
    artifact, path, side = _artifact(tmp_path)
    verify_artifact(tmp_path, artifact)
    side.write_text('{"target": "other"}')
    with pytest.raises(RegnasError, match="changed since export; re-run regnas export"):
        verify_artifact(tmp_path, artifact)
    side.write_text("{}")
    path.write_bytes(b"model!")
    with pytest.raises(RegnasError, match="no longer matches its sha256"):
        verify_artifact(tmp_path, artifact)
    path.unlink()
    with pytest.raises(RegnasError, match="is missing"):
        verify_artifact(tmp_path, artifact)


def test_record_round_trips_and_a_malformed_one_is_a_one_line_error(tmp_path):
    artifact, _, _ = _artifact(tmp_path)
    assert ArtifactRecord.from_json(artifact.to_json()) == artifact and artifact.label == "phone/onnx-int8.onnx"
    with pytest.raises(RegnasError, match="malformed artifact entry"):
        ArtifactRecord.from_json({**artifact.to_json(), "colour": "blue"})
