import math

from regnas.schema import list_of, mapping, maybe, number, record, such_that, text

POINT = record({"name": such_that(text, lambda v: v != ""), "x": number(0, 1)}, {"n": maybe(number(0, integer=True))})
DOC = record({"points": list_of(POINT, min_length=1), "tags": mapping(text)})


def test_a_valid_document_has_no_problem():
    assert DOC({"points": [{"name": "a", "x": 0.5, "n": None}, {"name": "b", "x": 1}], "tags": {"k": "v"}, "extra": 1}, "") is None


def test_each_problem_names_its_path_and_value():
    cases = [
        ({"tags": {}}, "points is missing"),
        ({"points": [], "tags": {}}, "points has 0 entries, not 1 or more"),
        ({"points": "a", "tags": {}}, "points is not a list"),
        ({"points": [{"name": "a", "x": "50%"}], "tags": {}}, "points[0].x is not valid ('50%')"),
        ({"points": [{"name": "a", "x": math.nan}], "tags": {}}, "points[0].x is not valid (nan)"),
        ({"points": [{"name": "a", "x": True}], "tags": {}}, "points[0].x is not valid (True)"),  # a boolean is no number
        ({"points": [{"name": "", "x": 0}], "tags": {}}, "points[0].name is not valid ('')"),
        ({"points": [{"name": "a", "x": 0, "n": 1.5}], "tags": {}}, "points[0].n is not valid (1.5)"),
        ({"points": [{"name": "a", "x": 0}], "tags": {"k": 3}}, "tags.k is not valid (3)"),
        ({"points": [{"name": "a", "x": 0}], "tags": {}, "big": 1}, None),
        ([1], "is not an object"),
    ]
    for doc, problem in cases:
        got = DOC(doc, "")
        assert (got is None) if problem is None else (got is not None and got.strip() == problem.strip()), (doc, got)


def test_long_values_are_cut_in_the_message():
    got = record({"s": number()})({"s": "x" * 500}, "")
    assert got.startswith("s is not valid ('xxx") and got.endswith("...)") and len(got) < 90
