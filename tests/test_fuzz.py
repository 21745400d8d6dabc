"""Fuzzing the files regnas reads from users and from builds: report.json, target TOML and predictions.

Each reader either accepts its input or refuses it with a RegnasError; nothing else may escape it, and what a
reader accepts its consumers must handle (a report that reads renders to HTML and markdown). Hypothesis mutates
a real report and target and generates predictions; the example counts are kept small for CI's time.
"""

from __future__ import annotations

import copy
import json
import tomllib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from regnas.builddir import BuildReport
from regnas.errors import RegnasError
from regnas.report import markdown_summary, render_html
from regnas.targets import BUILTIN_DIR, parse_target

EXAMPLES = 100
REPORT_EXAMPLES = 20
"""Each report that reads is rendered, plots and all (about 3 s each)."""
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**40), 2**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=6
)


def _paths(obj, prefix=()):
    """Every (path, value) in a JSON document."""
    yield prefix, obj
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


def _fields(doc) -> dict[str, list[tuple]]:
    """Every path in `doc` grouped by its field (list indices as `*`), so that each field, not each of the many
    search candidates, is equally likely to be mutated."""
    fields: dict[str, list[tuple]] = {}
    for path, _ in _paths(doc):
        if path:
            fields.setdefault("/".join("*" if isinstance(k, int) else k for k in path), []).append(path)
    return fields


def _mutate(doc, path, value, delete: bool):
    doc = copy.deepcopy(doc)
    *parent, last = path
    node = doc
    for key in parent:
        node = node[key]
    if delete and isinstance(node, dict):
        del node[last]
    else:
        node[last] = value
    return doc


@pytest.fixture(scope="module")
def report(built):
    return json.loads((built[0] / "report.json").read_text())


@settings(max_examples=REPORT_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_report_is_read_and_rendered_or_refused_in_one_line(report, tmp_path_factory, data):
    fields = _fields(report)
    field = data.draw(st.sampled_from(sorted(fields)))
    doc = _mutate(report, data.draw(st.sampled_from(fields[field])), data.draw(VALUES), data.draw(st.booleans()))
    out = tmp_path_factory.mktemp("fuzz")
    (out / "report.json").write_text(json.dumps(doc))
    try:
        read = BuildReport.read(out)
    except RegnasError as exc:
        assert "\n" not in str(exc)
        return
    render_html(read)
    markdown_summary(read)


@pytest.fixture(scope="module")
def target():
    return tomllib.loads((BUILTIN_DIR / "edge.toml").read_text())


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_a_mutated_target_is_parsed_or_refused_in_one_line(target, data):
    paths = [p for p, _ in _paths(target) if p]
    doc = _mutate(target, data.draw(st.sampled_from(paths)), data.draw(VALUES), data.draw(st.booleans()))
    try:
        t = parse_target(doc, "fuzz.toml")
    except RegnasError as exc:
        assert "\n" not in str(exc)
        return
    t.to_json()
    t.describe_budget()


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    preds=st.one_of(
        st.lists(st.integers(-3, 12), max_size=300),
        st.lists(st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=10, max_size=10), max_size=300),
        st.lists(st.floats(allow_nan=True), max_size=300),
    ),
    as_json=st.booleans(),
)
def test_predictions_files_are_read_or_refused_in_one_line(digits, tmp_path_factory, preds, as_json):
    from regnas.workflow.gate import predictions

    folder = tmp_path_factory.mktemp("preds")
    split = digits["test"]
    if as_json:
        path = folder / "p.json"
        path.write_text(json.dumps(preds))
    else:
        path = folder / "p.npy"
        np.save(path, np.asarray(preds))
    try:
        out = predictions(str(path), split, digits.num_classes)
    except RegnasError as exc:
        assert "\n" not in str(exc)
        return
    assert out.shape == (len(split),) and out.min() >= 0 and out.max() < digits.num_classes
