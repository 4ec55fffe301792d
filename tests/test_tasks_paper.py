"""The paper's tasks 2..7: answers checked against independent per-row computations, worked
examples, label balance, properties, scoring round trips, determinism and split disjointness."""

from __future__ import annotations

import math
import re
from fractions import Fraction
from itertools import permutations
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull, QhullError

from worldrep.data import DatasetSpec, build_rows, load_split, make_dataset
from worldrep.errors import WorldrepError
from worldrep.tasks import get_task
from worldrep.tasks.angle import angle_degrees
from worldrep.tasks.base import Items, Sampling
from worldrep.tasks.compass import direction, sector_of_angle
from worldrep.tasks.crossing import crosses
from worldrep.tasks.inside import in_hull
from worldrep.tasks.perimeter import perimeter_length
from worldrep.tasks.trianglearea import twice_area

TASKS = ("trianglearea", "angle", "compass", "inside", "perimeter", "crossing")
SIZES = dict(n_train=3000, n_val=128, n_test=1000)
ID = re.compile(r"c_(\d{4})")


@pytest.fixture(scope="module")
def datasets(world, tmp_path_factory):
    root = tmp_path_factory.mktemp("paper_tasks")
    return {t: make_dataset(world, DatasetSpec(task=t, **SIZES), root / t) for t in TASKS}


def rows_of(world, datasets, task, split="train"):
    """(city coordinates per row as lists of (x, y), answer text, full text) parsed from text."""
    frame = load_split(datasets[task], split)
    out = []
    for text in frame["text"]:
        prompt, answer = text.split(")=")
        ids = [int(i) for i in ID.findall(prompt)]
        rows = world.row_of_id[ids]
        assert (rows >= 0).all(), text
        pts = [(int(world.x[r]), int(world.y[r])) for r in rows]
        out.append((pts, answer, text))
    return out


# -- independent per-row answers -------------------------------------------------------------
def ref_triarea(a, b, c):
    cross = (b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0])
    return round(Fraction(abs(cross), 2))  # Python rounds a Fraction half to even


def ref_angle(a, b, c):
    u, v = (a[0] - b[0], a[1] - b[1]), (c[0] - b[0], c[1] - b[1])
    nu, nv = math.hypot(*u), math.hypot(*v)
    if nu == 0 or nv == 0:
        return 0
    cos = max(-1.0, min(1.0, (u[0] * v[0] + u[1] * v[1]) / (nu * nv)))
    return round(math.degrees(math.acos(cos)))


def ref_compass(a, b):
    dx, dy = b[0] - a[0], b[1] - a[1]
    if dx == 0 and dy == 0:
        return "N"
    theta = math.degrees(math.atan2(dy, dx)) % 360
    names = ["E", "NE", "N", "NW", "W", "SW", "S", "SE"]
    # the direction whose centre is angularly nearest
    gaps = [min(abs(theta - 45 * k), 360 - abs(theta - 45 * k)) for k in range(8)]
    return names[gaps.index(min(gaps))]


def ref_inside(t, hull):
    pts = np.array(hull, float)
    try:
        h = ConvexHull(pts)
    except QhullError:  # collinear or coincident hull cities: an empty hull
        return "FALSE"
    return "TRUE" if (h.equations @ np.array([*t, 1.0]) <= 1e-9).all() else "FALSE"


def ref_perimeter(pts):
    if len(pts) == 2:
        return round(math.dist(*pts))
    return round(sum(math.dist(pts[i], pts[(i + 1) % len(pts)]) for i in range(len(pts))))


def ref_cross(p1, p2, p3, p4):
    """Parametric intersection in exact fractions: a proper crossing meets both open segments."""
    d1 = (p2[0] - p1[0], p2[1] - p1[1])
    d2 = (p4[0] - p3[0], p4[1] - p3[1])
    den = d1[0] * d2[1] - d1[1] * d2[0]
    if den == 0:
        return "FALSE"
    w = (p3[0] - p1[0], p3[1] - p1[1])
    t = Fraction(w[0] * d2[1] - w[1] * d2[0], den)
    u = Fraction(w[0] * d1[1] - w[1] * d1[0], den)
    return "TRUE" if 0 < t < 1 and 0 < u < 1 else "FALSE"


REFERENCE = {
    "trianglearea": lambda p: str(ref_triarea(*p)),
    "angle": lambda p: str(ref_angle(*p)),
    "compass": lambda p: ref_compass(*p),
    "inside": lambda p: ref_inside(p[0], p[1:]),
    "perimeter": lambda p: str(ref_perimeter(p)),
    "crossing": lambda p: ref_cross(*p),
}
N_CITIES = {"trianglearea": {3}, "angle": {3}, "compass": {2}, "inside": {4, 5, 6},
            "perimeter": {2, 3, 4, 5}, "crossing": {4}}


@pytest.mark.parametrize("task", TASKS)
def test_answers_match_independent_computation(world, datasets, task):
    rows = rows_of(world, datasets, task) + rows_of(world, datasets, task, "test")
    wrong = [text for pts, answer, text in rows if REFERENCE[task](pts) != answer]
    assert not wrong, wrong[:5]
    assert {len(pts) for pts, _, _ in rows} == N_CITIES[task]


@pytest.mark.parametrize("task", TASKS)
def test_text_columns_agree(world, datasets, task):
    frame = load_split(datasets[task], "test")
    t = get_task(task)
    for text, answer, cities, plen in zip(frame.text, frame.answer, frame.cities,
                                          frame.prompt_len, strict=True):
        assert text.startswith(t.prefix)
        assert text[len(t.prefix) + 6] == t.first_delimiter
        assert text[plen - 1:] == answer  # prompt_len counts <bos>
        assert [int(i) for i in ID.findall(text)] == list(cities)
    if t.metric == "error":
        assert (frame.value == frame.answer.astype(float)).all()


# -- worked examples -------------------------------------------------------------------------
# Paris, London, Tokyo in 0.1-degree units (data.md §3.1-3.6)
PLT_X, PLT_Y = np.array([23, -1, 1397]), np.array([489, 515, 357])
P, L, T = 0, 1, 2


def toy_sampling():
    return Sampling(SimpleNamespace(x=PLT_X, y=PLT_Y), pool=np.arange(3))


def answer(task, *tuples, params=None):
    t = get_task(task)
    p = t.Params(**(params or {}))
    return list(t.answers(toy_sampling(), Items(np.array(tuples)), p))


def test_worked_examples():
    assert answer("trianglearea", [P, L, T], [T, P, L]) == ["16278", "16278"]
    assert answer("angle", [P, L, T]) == ["41"]
    assert answer("compass", [P, L], [P, T], [L, P]) == ["NW", "E", "SE"]
    assert answer("perimeter", [P, L, T], [P, L, -1]) == ["2823", "35"]
    assert answer("angle", [P, P, T]) == ["0"]  # coincident: no angle
    assert answer("compass", [P, P]) == ["N"]  # coincident: no direction
    assert answer("trianglearea", [P, P, T]) == ["0"]


def test_compass_boundaries_go_counter_clockwise():
    names = np.array(["E", "NE", "N", "NW", "W", "SW", "S", "SE"])
    assert list(names[sector_of_angle(np.array([22.5, 67.5, 337.5, -22.5, 0, 360, 180]))]) == [
        "NE", "N", "E", "E", "E", "E", "W"]
    assert list(names[sector_of_angle(np.array([22.4999, 157.5, 202.5, 292.5]))]) == [
        "E", "W", "SW", "SE"]
    assert list(direction([1, 0, -1, 0, 1, -3], [0, 1, 0, -1, 1, -3])) == [
        "E", "N", "W", "S", "NE", "SW"]


def test_inside_boundary_vertex_and_collinear_hulls():
    # square 0..4; test points: centre, edge, vertex, outside; then a collinear hull
    x = np.array([0, 4, 4, 0, 2, 4, 0, 9, 1, 2, 3])
    y = np.array([0, 0, 4, 4, 2, 2, 0, 9, 1, 2, 3])
    sq = [0, 1, 2, 3]
    rows = np.array([[4, *sq], [5, *sq], [6, 1, 2, 3, 0], [7, *sq], [9, 8, 10, 6, -1]])
    assert list(in_hull(x, y, rows)) == [True, True, True, False, False]


def test_crossing_touching_and_shared_points_do_not_cross():
    x = np.array([0, 2, 0, 2, 1, 1, 3])
    y = np.array([0, 2, 2, 0, 1, 5, 3])
    quads = np.array([[0, 1, 2, 3],  # the diagonals of a square cross
                      [0, 1, 4, 5],  # 4 lies on segment 0-1: touching only
                      [0, 4, 1, 6],  # collinear, disjoint
                      [0, 1, 0, 2],  # shared endpoint
                      [0, 2, 1, 3]])  # parallel sides
    assert list(crosses(x, y, quads)) == [True, False, False, False, False]


# -- balance, disjointness, determinism ------------------------------------------------------
@pytest.mark.parametrize("task", ["inside", "crossing"])
def test_labels_balanced_exactly_in_every_split(datasets, task):
    for split, n in zip(("train", "validation", "test"), SIZES.values(), strict=True):
        answers = load_split(datasets[task], split, ["answer"])["answer"]
        assert len(answers) == n
        assert (answers == "TRUE").sum() == round(n * 0.5)
        assert set(answers) == {"TRUE", "FALSE"}


def test_balance_follows_true_ratio(world):
    splits, _ = build_rows(world, DatasetSpec(task="crossing", n_train=2000, n_val=100,
                                              n_test=500, true_ratio=0.6))
    assert [int((np.asarray(s["answer"]) == "TRUE").sum()) for s in splits.values()] == [
        1200, 60, 300]


def item_key(task, cities):
    if task == "inside":  # another test city makes another item
        return (cities[0], *sorted(cities[1:]))
    return tuple(sorted(cities))


@pytest.mark.parametrize("task", TASKS)
def test_no_item_shared_or_repeated_across_splits(datasets, task):
    keys = {}
    for split in ("train", "validation", "test"):
        cities = load_split(datasets[task], split, ["cities"])["cities"]
        keys[split] = [item_key(task, list(c)) for c in cities]
        assert len(set(keys[split])) == len(keys[split]), f"repeated item in {split}"
    train, val, test = (set(k) for k in keys.values())
    assert not train & val and not train & test and not val & test


@pytest.mark.parametrize("task", TASKS)
def test_same_spec_same_rows(world, task):
    spec = DatasetSpec(task=task, n_train=500, n_val=20, n_test=100)
    a, _ = build_rows(world, spec)
    b, _ = build_rows(world, spec)
    # pandas equality: the NaN `value` of label tasks compares equal to itself
    assert all(a[s].to_pandas().equals(b[s].to_pandas()) for s in a)
    c, _ = build_rows(world, spec.model_copy(update={"seed": 7}))
    assert not a["train"].to_pandas().equals(c["train"].to_pandas())


def test_required_group_in_every_item(world):
    atlantis = set(world.ids[world.groups == "Atlantis"].tolist())
    for task in ("inside", "perimeter", "crossing", "angle"):
        splits, _ = build_rows(world, DatasetSpec(task=task, n_train=300, n_val=10, n_test=50,
                                                  require="Atlantis"))
        for frame in splits.values():
            assert all(atlantis & set(c) for c in frame["cities"].to_pylist()), task


# -- parameters ------------------------------------------------------------------------------
def test_params_set_the_number_of_cities(world):
    splits, meta = build_rows(world, DatasetSpec(task="inside", n_train=300, n_val=0, n_test=0,
                                                 params={"min_n": 6, "max_n": 7}))
    assert meta["params"] == {"min_n": 6, "max_n": 7}
    assert {len(c) for c in splits["train"]["cities"].to_pylist()} == {7, 8}
    splits, _ = build_rows(world, DatasetSpec(task="perimeter", n_train=200, n_val=0,
                                              n_test=0, params={"min_n": 3, "max_n": 3}))
    assert {len(c) for c in splits["train"]["cities"].to_pylist()} == {3}


@pytest.mark.parametrize("task, params, message", [
    ("inside", {"min_n": 2}, "min_n"),
    ("inside", {"min_n": 5, "max_n": 4}, "min_n (5) must be <= max_n (4)"),
    ("inside", {"max_n": 40}, "max_n"),
    ("perimeter", {"min_n": 1}, "min_n"),
    ("perimeter", {"mode": "x"}, "unknown key 'mode'"),
    ("crossing", {"min_n": 3}, "unknown key 'min_n'"),
])
def test_bad_params_are_clear_errors(world, task, params, message):
    with pytest.raises(WorldrepError, match=re.escape(message)):
        build_rows(world, DatasetSpec(task=task, n_train=10, n_val=0, n_test=0, params=params))


@pytest.mark.parametrize("task", ["inside", "perimeter", "crossing"])
def test_pool_too_small_fails_early(world, task):
    ids = ",".join(str(i) for i in world.ids[:3])
    with pytest.raises(WorldrepError, match="distinct cities"):
        build_rows(world, DatasetSpec(task=task, n_train=10, n_val=0, n_test=0,
                                      pool=f"ids:{ids}"))


# -- scoring ---------------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASKS)
def test_scoring_true_answer_and_garbage(world, datasets, task):
    frame = load_split(datasets[task], "validation")
    t = get_task(task)
    texts = frame["text"].to_numpy()
    prompts = np.array([s[:n] for s, n in zip(texts, t.prompt_chars(texts), strict=True)])
    answers = frame["answer"].to_numpy()
    value, valid = t.score(world, prompts, answers, answers)
    assert valid.all()
    assert (value == (0.0 if t.metric == "error" else 1.0)).all()
    garbage = np.array(["", "abc", "12x", "MAYBE", "c_0001", "-5"] * 3)[: len(answers)]
    value, valid = t.score(world, prompts[: len(garbage)], answers[: len(garbage)], garbage)
    assert not valid.any()
    assert (value == t.failure_value).all()
    if t.metric == "error":  # an off-by-3 answer scores its error
        off = (answers.astype(int) + 3).astype(str)
        value, valid = t.score(world, prompts, answers, off)
        assert valid.all() and (value == 3).all()
    else:  # a valid but wrong label scores 0 and stays valid
        wrong = np.where(answers == "TRUE", "FALSE", "TRUE") if t.balanced_labels else \
            np.where(answers == "N", "S", "N")
        value, valid = t.score(world, prompts, answers, wrong)
        assert valid.all() and (value == 0).all()


def test_failure_values_are_the_references():
    assert get_task("trianglearea").failure_value == 3_240_000
    assert get_task("angle").failure_value == 180
    assert get_task("perimeter").failure_value == 20_000
    assert [get_task(t).failure_value for t in ("compass", "inside", "crossing")] == [0, 0, 0]


# -- properties ------------------------------------------------------------------------------
coord = st.integers(-30, 30)  # a small grid: coincident and collinear cities are common
points = st.lists(st.tuples(coord, coord), min_size=3, max_size=6)


def as_xy(pts):
    return np.array([p[0] for p in pts]), np.array([p[1] for p in pts])


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(coord, coord), min_size=3, max_size=3))
def test_triangle_area_invariant_under_permutation(pts):
    x, y = as_xy(pts)
    areas = twice_area(x, y, np.array(list(permutations(range(3)))))
    assert (areas == areas[0]).all()
    (ax, ay), (bx, by), (cx, cy) = pts
    assert areas[0] == abs((bx - ax) * (cy - ay) - (by - ay) * (cx - ax))


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(coord, coord), min_size=3, max_size=3))
def test_angle_range_symmetry_and_sum(pts):
    x, y = as_xy(pts)
    theta = angle_degrees(x, y, np.array([[0, 1, 2], [2, 1, 0], [1, 2, 0], [2, 0, 1]]))
    assert ((theta >= 0) & (theta <= 180)).all()
    assert theta[0] == pytest.approx(theta[1])
    if twice_area(x, y, np.array([[0, 1, 2]]))[0] > 0:  # a real triangle's angles sum to 180
        assert theta[0] + theta[2] + theta[3] == pytest.approx(180)


@settings(max_examples=150, deadline=None)
@given(points)
def test_perimeter_rotation_reversal_and_two_cities(pts):
    x, y = as_xy(pts)
    m = len(pts)
    order = np.arange(m)
    rows = np.array([order, np.roll(order, 2), order[::-1]])
    lengths = perimeter_length(x, y, rows)
    assert lengths == pytest.approx([lengths[0]] * 3)
    two = perimeter_length(x, y, np.array([[0, 1] + [-1] * (m - 2)]))[0]
    assert two == pytest.approx(math.dist(pts[0], pts[1]))
    dist = get_task("distance").answers(Sampling(SimpleNamespace(x=x, y=y), np.arange(m)),
                                        Items(np.array([[0, 1]])), None)[0]
    assert str(int(np.round(two))) == dist


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(coord, coord), min_size=4, max_size=4))
def test_crossing_matches_fractions_and_is_symmetric(pts):
    x, y = as_xy(pts)
    quads = np.array([[0, 1, 2, 3], [1, 0, 2, 3], [0, 1, 3, 2], [2, 3, 0, 1]])
    got = crosses(x, y, quads)
    assert (got == got[0]).all()
    assert ("TRUE" if got[0] else "FALSE") == ref_cross(*pts)


@settings(max_examples=300, deadline=None)
@given(st.tuples(coord, coord), points)
def test_inside_matches_scipy_and_ignores_hull_order(t, hull):
    x, y = as_xy([t, *hull])
    m = len(hull)
    rows = np.array([[0, *range(1, m + 1)], [0, *range(m, 0, -1)]])
    got = in_hull(x, y, rows)
    assert got[0] == got[1]
    assert ("TRUE" if got[0] else "FALSE") == ref_inside(t, hull)


@pytest.mark.parametrize("task", ["inside", "crossing"])
def test_pool_without_true_items_fails_clearly(world, task):
    x = np.unique(world.x, return_counts=True)
    meridian = int(x[0][x[1].argmax()])  # the most cities on one meridian: all collinear
    with pytest.raises(WorldrepError, match="no item with answer TRUE"):
        build_rows(world, DatasetSpec(task=task, n_train=20, n_val=0, n_test=0,
                                      pool=f"bounds:{meridian},{meridian},-900,900"))
