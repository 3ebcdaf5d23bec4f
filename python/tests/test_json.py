"""The Rust json.dumps of the sink's default value_serializer writes the
same bytes as json.dumps, and defers to it for everything else."""

import json
import math
import random

import pytest

from mqlink._mqlink import json_dumps

FLOATS = [21.5, 0.0, -0.0, 1.0, 1e16, 1e15, 123456789012345678.0, 0.0001, 0.00001, 1.5e-7,
          0.1 + 0.2, 5e-324, 1.7976931348623157e308, -2.5e100, math.nan, math.inf, -math.inf,
          1e-4, 9.999999999999999e15, 2**53 + 0.0, 3.0e-5]


class Sub(dict):
    pass


class Unknown:
    pass


VALUES = [
    None, True, False, 0, -1, 2**63, -(2**70), "", "plain", 'q"b\\s\n\r\t\b\f\x01\x7f é 😀 \u2028',
    [], (), {}, [1, [2, (3,)], {"a": None}], {"device_id": "dev-1", "seq": 1, "temp": 21.5},
    {"nested": {"deep": [1.5, "x", {"k": [True, False]}]}}, Sub(a=1), {1: "int key"},
    {None: 1, True: 2, 1.5: 3}, [Sub(b=[1])],
    *FLOATS,
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_same_bytes_as_json_dumps(value):
    assert json_dumps(value) == json.dumps(value).encode()


def test_random_floats():
    rng = random.Random(7)
    for _ in range(20000):
        f = rng.choice([rng.random(), rng.uniform(-1e20, 1e20), rng.expovariate(1e-3),
                        math.ldexp(rng.random(), rng.randint(-1074, 1023))])
        assert json_dumps(f) == json.dumps(f).encode(), f


def test_errors_are_json_dumps_errors():
    with pytest.raises(TypeError, match="not JSON serializable"):
        json_dumps({"a": Unknown()})
    loop = []
    loop.append(loop)
    with pytest.raises((ValueError, RecursionError)):
        json_dumps(loop)
    with pytest.raises((ValueError, TypeError)):
        json_dumps({(1, 2): "tuple key"})
