"""The discrete-event engine on synthetic op lists: hand-checked cases and random equality with
the slow reference."""

import random

import pytest

from imcflow.errors import SimError
from imcflow.sim.timing import Op, OpKind, core_timelines, run, run_reference


def _op(i, res, d, deps=(), space=(), lat=0.0, prio=0, core=-1, kind=OpKind.COMPUTE, group=-1):
    return Op(i, res, d, kind, tuple(deps), tuple(space), lat, core=core, priority=prio, group=group)


def test_chain_on_two_resources_pipelines():
    # producer a (1 s per item) feeds consumer b (2 s per item): b is the bottleneck
    ops, n = [], 4
    for k in range(n):
        ops.append(_op(2 * k, "a", 1.0, deps=[2 * (k - 1)] if k else []))
        ops.append(_op(2 * k + 1, "b", 2.0, deps=[2 * k]))
    s = run(ops)
    assert [s.finish_s[2 * k + 1] for k in range(n)] == [3.0, 5.0, 7.0, 9.0]
    assert s.makespan_s == 9.0


def test_latency_delays_successor_but_not_resource():
    ops = [_op(0, "link", 1.0, lat=5.0), _op(1, "link", 1.0), _op(2, "core", 1.0, deps=[0])]
    s = run(ops)
    assert s.start_s[1] == 1.0        # the link is free after 1 s
    assert s.start_s[2] == 6.0        # the data arrives after 1 s + 5 s of hops
    assert s.wait_reason[2] == "input"


def test_priority_orders_ready_ops():
    ops = [_op(0, "r", 1.0, prio=5), _op(1, "r", 1.0, prio=1), _op(2, "r", 1.0, prio=3)]
    s = run(ops)
    assert (s.start_s[1], s.start_s[2], s.start_s[0]) == (0.0, 1.0, 2.0)


def test_space_dependency_is_back_pressure():
    # producer p makes 4 items into a 1-item buffer drained by slow consumer c
    ops = []
    for k in range(4):
        deps = [2 * (k - 1)] if k else []
        space = [2 * (k - 1) + 1] if k else []
        ops.append(_op(2 * k, "p", 1.0, deps=deps, space=space, core=0))
        ops.append(_op(2 * k + 1, "core1.array", 3.0, deps=[2 * k], core=1))
    for op in ops:
        if op.resource == "p":
            op.resource = "core0.array"
    s = run(ops)
    assert s.start_s[2] == 4.0 and s.wait_reason[2] == "output"
    tl = core_timelines(ops, s, 2)
    assert tl[0].busy_s == 4.0 and tl[0].wait_output_s == 9.0
    assert tl[1].busy_s == 12.0 and tl[1].wait_input_s == 3.0 and s.makespan_s == 16.0
    assert tl[0].idle_s == pytest.approx(s.makespan_s - 13.0)


def test_same_group_shares_the_resource_other_groups_wait():
    ops = [_op(0, "arr", 2.0, group=0), _op(1, "arr", 2.0, group=0), _op(2, "arr", 1.0, group=1),
           _op(3, "arr", 1.0, group=0, prio=5)]
    s = run(ops)
    assert (s.start_s[0], s.start_s[1]) == (0.0, 0.0)      # one slot: evaluated together
    assert s.start_s[2] == 2.0                              # another slot takes its turn
    assert s.start_s[3] == 3.0                              # behind it in priority order


def test_cycle_is_an_error():
    ops = [_op(0, "r", 1.0, deps=[1]), _op(1, "r", 1.0, deps=[0])]
    with pytest.raises(SimError, match="cycle"):
        run(ops)


def test_bad_dependency_is_an_error():
    with pytest.raises(SimError, match="bad dependency"):
        run([_op(0, "r", 1.0, deps=[7])])


@pytest.mark.parametrize("seed", range(12))
def test_equals_reference_on_random_dags(seed):
    rng = random.Random(seed)
    n = rng.randint(5, 30)
    ops = []
    for i in range(n):
        deps = rng.sample(range(i), k=min(i, rng.randint(0, 3)))
        space = rng.sample(range(i), k=min(i, rng.randint(0, 1)))
        space = [d for d in space if d not in deps]
        ops.append(_op(i, f"r{rng.randint(0, 3)}", rng.choice([0.5, 1.0, 1.5, 2.0, 3.25]), deps, space,
                       lat=rng.choice([0.0, 0.0, 0.25, 1.0]), prio=rng.randint(0, 3),
                       group=rng.choice([-1, 0, 1])))
    a, b = run(ops), run_reference(ops)
    assert a.start_s == b.start_s and a.finish_s == b.finish_s
