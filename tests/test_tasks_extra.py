"""center, circlecount, nearest_neighbor, randomwalk, randring: answers checked row by row
against a direct computation over the world table, plus scoring, splits and prompt lengths."""

import re

import numpy as np
import pytest

from worldrep.data import DatasetSpec, build_rows
from worldrep.errors import WorldrepError
from worldrep.pools import select
from worldrep.tasks import get_task

EXTRA = ("center", "circlecount", "nearest_neighbor", "randomwalk", "randring")
SIZES = dict(n_train=1200, n_val=30, n_test=300)


@pytest.fixture(scope="module")
def rows(world):
    """Each task's splits over the default pool ('world'), built once."""
    return {name: build_rows(world, DatasetSpec(task=name, **SIZES))[0] for name in EXTRA}


def frame(rows, name, split="train"):
    return rows[name][split].to_pandas()


class Table:
    """Plain look-ups over the world table, independent of the task code."""

    def __init__(self, world, selector="world"):
        self.universe = world.ids[select(world, selector)]
        self.pos = {int(i): (int(x), int(y)) for i, x, y in zip(world.ids, world.x, world.y,
                                                                strict=True)}
        self.ux = np.array([self.pos[int(i)][0] for i in self.universe])
        self.uy = np.array([self.pos[int(i)][1] for i in self.universe])

    def sq_dist(self, a: int, b: int) -> int:
        (ax, ay), (bx, by) = self.pos[a], self.pos[b]
        return (ax - bx) ** 2 + (ay - by) ** 2

    def sq_dist_all(self, c: int) -> np.ndarray:
        x, y = self.pos[c]
        return (self.ux - x) ** 2 + (self.uy - y) ** 2


def ids_of(text: str) -> list[int]:
    return [int(v) for v in re.findall(r"c_(\d{4})", text)]


def prompts_of(f):
    return np.array([t[: p - 1] for t, p in zip(f.text, f.prompt_len, strict=True)])


def outputs_of(f):
    return np.array([t[p - 1:] for t, p in zip(f.text, f.prompt_len, strict=True)])


# -- answers against a direct computation ----------------------------------------------------
def test_circlecount_matches_brute_force(world, rows):
    t = Table(world)
    for text, answer in zip(frame(rows, "circlecount").text, frame(rows, "circlecount").answer,
                            strict=True):
        c, r = map(int, re.fullmatch(r"circlecount\(c_(\d+),r=(\d+)\)=\d+", text).groups())
        d2 = t.sq_dist_all(c)
        assert int(answer) == int(((d2 <= r * r) & (t.universe != c)).sum()), text


def test_nearest_sorted_never_the_query_and_exact(world, rows):
    t = Table(world)
    for text in frame(rows, "nearest_neighbor").text:
        q, k = map(int, re.match(r"nearest\(c_(\d+),(\d+)\)=", text).groups())
        got = ids_of(text.split(")=")[1])
        assert len(got) == k and q not in got
        dists = [t.sq_dist(q, g) for g in got]
        assert dists == sorted(dists)
        d2, ids = t.sq_dist_all(q), t.universe
        keep = ids != q
        by_distance_then_id = np.lexsort((ids[keep], d2[keep]))
        assert got == ids[keep][by_distance_then_id[:k]].tolist(), text


def test_center_answers_nearest_to_centroid(world, rows):
    t = Table(world)
    f = frame(rows, "center")
    flags = []
    for text in f.text:
        listed_part, flag, answer = re.fullmatch(r"center\((.*);in=(TRUE|FALSE)\)=(c_\d+)",
                                                 text).groups()
        listed = ids_of(listed_part)
        cx = sum(t.pos[i][0] for i in listed) / len(listed)
        cy = sum(t.pos[i][1] for i in listed) / len(listed)
        candidates = listed if flag == "TRUE" else [int(i) for i in t.universe]
        best = min(candidates, key=lambda i: ((t.pos[i][0] - cx) ** 2 + (t.pos[i][1] - cy) ** 2, i))
        assert ids_of(answer) == [best], text
        if flag == "TRUE":
            assert best in listed
        assert 1 <= len(listed) <= 5 and len(set(listed)) == len(listed)
        flags.append(flag == "TRUE")
    assert 0.4 < np.mean(flags) < 0.6


def test_randomwalk_steps_within_m_and_length_l(world, rows):
    t = Table(world)
    universe = set(t.universe.tolist())
    f = frame(rows, "randomwalk")
    for text in f.text:
        m, length = map(int, re.match(r"rw\((\d+),(\d+)\)=", text).groups())
        walk = ids_of(text.split(")=")[1])
        assert len(walk) == length and set(walk) <= universe
        for a, b in zip(walk[:-1], walk[1:], strict=True):
            assert a != b and t.sq_dist(a, b) <= m * m, text
        assert 50 <= m <= 500 and 5 <= length <= 20


def test_randring_members_in_ring_and_count(world, rows):
    t = Table(world)
    subsets = lowest = 0
    for text in frame(rows, "randring").text:
        head = re.match(r"randring\(c_(\d+),r=(\d+),R=(\d+),n=(\d+)\)=", text)
        c, r, big_r, n = map(int, head.groups())
        got = ids_of(text[head.end():])
        d2 = t.sq_dist_all(c)
        ring = set(t.universe[(d2 >= r * r) & (d2 <= big_r * big_r) & (t.universe != c)].tolist())
        assert set(got) <= ring and len(got) == min(n, len(ring)), text
        assert got == sorted(set(got))
        assert r < big_r
        if len(ring) > n:  # a random subset, not simply the n smallest ids
            subsets += 1
            lowest += got == sorted(ring)[:n]
    assert subsets > 100 and lowest < 0.2 * subsets


# -- required groups -------------------------------------------------------------------------
def test_center_and_nearest_honour_required_group(world):
    atlantis = set(world.ids[world.groups == "Atlantis"].tolist())
    for name in ("center", "nearest_neighbor", "circlecount", "randring", "randomwalk"):
        spec = DatasetSpec(task=name, pool="all", require="Atlantis", n_train=300, n_val=0,
                           n_test=100)
        for split in build_rows(world, spec)[0].values():
            for cities in split["cities"].to_pylist():
                assert atlantis & set(cities), name
    f = build_rows(world, DatasetSpec(task="nearest_neighbor", pool="all", require="Atlantis",
                                      n_train=400, n_val=0, n_test=100))[0]["train"].to_pandas()
    queries = f.text.str.extract(r"nearest\(c_(\d+),")[0].astype(int)
    assert set(queries) <= atlantis


def test_nearest_refuses_more_items_than_exist(world):
    spec = DatasetSpec(task="nearest_neighbor", pool="all", require="Atlantis", n_train=500,
                       n_val=1, n_test=0)
    with pytest.raises(WorldrepError, match="at most 500"):
        build_rows(world, spec)


def test_randomwalk_never_starts_at_a_city_without_neighbours(world):
    t = Table(world)
    a = int(t.universe[0])
    d2 = t.sq_dist_all(a)
    close = int(t.universe[np.argsort(d2)[1]])
    far = int(t.universe[np.argmax(d2)])
    m = max(1, int(np.ceil(np.sqrt(t.sq_dist(a, close)))))
    assert min(t.sq_dist(a, far), t.sq_dist(close, far)) > (m + 30) ** 2
    spec = DatasetSpec(task="randomwalk", pool=f"ids:{a},{close},{far}", n_train=20, n_val=0,
                       n_test=0, params=dict(min_max_distance=m, max_max_distance=m + 30,
                                             min_chain_length=2, max_chain_length=5))
    f = build_rows(world, spec)[0]["train"].to_pandas()
    assert all(far not in c for c in f.cities) and len(f) == 20


def test_bad_params_are_rejected(world):
    for name, params in [("circlecount", dict(min_radius=9, max_radius=3)),
                         ("nearest_neighbor", dict(min_k=0)),
                         ("randring", dict(min_n=5, max_n=2)),
                         ("randomwalk", dict(min_chain_length=1)),
                         ("center", dict(bogus=1))]:
        with pytest.raises(WorldrepError, match=f"params of task '{name}'"):
            build_rows(world, DatasetSpec(task=name, n_train=10, n_val=0, n_test=0,
                                          params=params))


# -- prompts, splits, determinism ------------------------------------------------------------
def test_prompt_ends_at_the_tasks_own_separator(rows):
    for name in EXTRA:
        f = frame(rows, name)
        for prompt, output, answer in zip(prompts_of(f), outputs_of(f), f.answer, strict=True):
            if name == "randomwalk":
                assert re.fullmatch(r"rw\(\d+,\d+\)=c_\d{4},", prompt)
                assert prompt[prompt.index("=") + 1:] + output == answer
            else:
                assert prompt.endswith(")=") and output == answer
                assert ")=" not in prompt[:-2]


def test_no_item_shared_across_splits(rows):
    def identity(name, text):
        prompt = text.split(")=")[0]
        if name == "center":
            listed, flag = prompt.split(";")
            return tuple(sorted(ids_of(listed))), flag
        return text if name == "randomwalk" else prompt

    for name in EXTRA:
        keys = {s: [identity(name, t) for t in frame(rows, name, s).text] for s in rows[name]}
        sets = {s: set(k) for s, k in keys.items()}
        assert all(len(sets[s]) == len(keys[s]) for s in keys), name
        assert not sets["train"] & sets["test"] and not sets["train"] & sets["validation"]
        assert not sets["validation"] & sets["test"], name


def test_deterministic(world, rows):
    for name in EXTRA:
        again = build_rows(world, DatasetSpec(task=name, **SIZES))[0]
        assert again["train"].to_pandas().equals(rows[name]["train"].to_pandas()), name


# -- scoring ---------------------------------------------------------------------------------
PERFECT = {"center": 0.0, "circlecount": 0.0, "nearest_neighbor": 1.0, "randomwalk": 1.0,
           "randring": 1.0}


@pytest.mark.parametrize("name", EXTRA)
def test_true_answer_scores_perfectly_and_garbage_is_invalid(world, rows, name):
    task = get_task(name)
    f = frame(rows, name, "test")
    prompts, answers, outputs = prompts_of(f), f.answer.to_numpy(), outputs_of(f)
    value, valid = task.score(world, prompts, answers, outputs)
    assert valid.all() and np.allclose(value, PERFECT[name])
    for junk in ("xyz", "c_12a", "12,", "c_0001;c_0002"):
        value, valid = task.score(world, prompts[:3], answers[:3], np.array([junk] * 3))
        assert not valid.any() and (value == task.failure_value).all(), (name, junk)


def test_partial_scores(world, rows):
    unknown = next(i for i in range(10_000) if world.row_of_id[i] < 0)
    bad_ref = f"c_{unknown:04d}"
    center = get_task("center")
    f = frame(rows, "center", "test")
    value, valid = center.score(world, prompts_of(f)[:2], f.answer.to_numpy()[:2],
                                np.array([bad_ref, f.answer.iloc[1]]))
    assert list(valid) == [False, True] and value[0] == pytest.approx(4024.92, abs=0.01)

    nearest = get_task("nearest_neighbor")
    f = frame(rows, "nearest_neighbor", "test")
    row = f[f.answer.str.count(",") >= 1].iloc[0]  # k >= 2
    first = row.answer.split(",")[0]
    value, valid = nearest.score(world, np.array([""]), np.array([row.answer]), np.array([first]))
    assert valid[0] and value[0] == pytest.approx(1 / len(row.answer.split(",")))
    value, valid = nearest.score(world, np.array([""]), np.array([row.answer]), np.array([""]))
    assert not valid[0] and value[0] == nearest.failure_value  # k >= 1: empty is malformed

    walk = get_task("randomwalk")
    f = frame(rows, "randomwalk", "test")
    prompt, output = prompts_of(f)[0], outputs_of(f)[0]
    length = len(f.answer.iloc[0].split(","))
    value, _ = walk.score(world, np.array([prompt] * 2), f.answer.to_numpy()[:2],
                          np.array([output + "," + bad_ref, ""]))
    assert value[0] == pytest.approx((length - 1) / length * np.exp(-1 / length))
    assert value[1] == 0.0

    ring = get_task("randring")
    f = frame(rows, "randring", "test")
    row = f[f.answer.str.count(",") >= 1].iloc[0]
    prompt = row.text[: row.prompt_len - 1]
    centre = prompt[len("randring("):len("randring(c_0000")]
    members = row.answer.split(",")
    n = len(members)
    value, valid = ring.score(world, np.array([prompt] * 3), np.array([row.answer] * 3),
                              np.array([row.answer + "," + centre, f"{members[0]},{members[0]}",
                                        bad_ref]))
    assert valid.all()
    assert value[0] == pytest.approx(n / (n + 1) * np.exp(-1 / n))  # the centre never counts
    assert value[1] == pytest.approx(0.5 * np.exp(-abs(2 - n) / n))  # repeats count once
    assert value[2] == pytest.approx(0.0)
