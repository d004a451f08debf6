"""The restricted pickle reader: it describes what torch.save and DCP write, refuses every
global outside torch's weights_only allowlist, and never executes anything."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shardscan import pickle_reader as pr
from shardscan.formats.dcp import DCP_POLICY
from shardscan.formats.torch_pickle import TORCH_POLICY
from shardscan.errors import FormatError, UnsafePickleError

from hostile_pickles import hostile, malformed


def test_allowlist_is_exactly_torchs_weights_only_allowlist():
    # Oracle: torch's own table of what weights_only=True permits by default.
    from torch._weights_only_unpickler import _get_allowed_globals

    ours = set(TORCH_POLICY.values) | set(TORCH_POLICY.reduce) | set(TORCH_POLICY.newobj)
    assert ours == set(_get_allowed_globals())


@pytest.mark.parametrize("name", sorted(hostile("/nonexistent/canary")))
def test_hostile_pickle_is_refused_and_nothing_runs(name, tmp_path):
    canary = tmp_path / "canary"
    data, global_name = hostile(str(canary))[name]
    with pytest.raises(UnsafePickleError) as info:
        pr.load(data, TORCH_POLICY)
    assert info.value.global_name == global_name
    assert str(info.value) == f"unsafe pickle global {global_name}"
    # The DCP allowlist refuses them too.
    with pytest.raises(UnsafePickleError):
        pr.load(data, DCP_POLICY)
    assert not canary.exists()


@pytest.mark.parametrize("name", sorted(hostile("/nonexistent/canary")))
def test_torch_refuses_the_same_hostile_pickles(name, tmp_path):
    # Proves the inputs are really hostile: torch's weights_only unpickler rejects them as well.
    import io

    import torch

    canary = tmp_path / "canary"
    data, _ = hostile(str(canary))[name]
    with pytest.raises(Exception):
        torch._weights_only_unpickler.load(io.BytesIO(data))
    assert not canary.exists()


@pytest.mark.parametrize("name", sorted(malformed()))
def test_malformed_pickle_is_a_format_error(name):
    data, _ = malformed()[name]
    limits = pr.Limits(max_memo=1000)
    with pytest.raises(FormatError) as info:
        obj = pr.load(data, TORCH_POLICY, limits)
        list(pr.iter_leaves(obj, limits))  # nesting is bounded when flattened
    assert not isinstance(info.value, UnsafePickleError)
    assert str(info.value).startswith("pickle: ")


def test_shared_containers_cannot_explode_when_flattened():
    # A list holding the same list 10 times, 30 levels deep: 10**30 leaves by path.
    data = b"\x80\x02Nq\x000"
    for _ in range(30):
        data += b"](" + b"h\x00" * 10 + b"eq\x000"  # memo[0] = [memo[0]] * 10; POP
    data += b"h\x00."
    obj = pr.load(data, TORCH_POLICY)
    with pytest.raises(FormatError, match="values when flattened"):
        list(pr.iter_leaves(obj, pr.Limits(max_leaves=100_000)))


def test_self_containing_list_is_refused():
    data = b"\x80\x02]q\x00h\x00a."  # l = []; l.append(l)
    with pytest.raises(FormatError, match="contains itself"):
        list(pr.iter_leaves(pr.load(data, TORCH_POLICY)))


# Plain data round-trips: our description equals what pickle itself builds.
leaves = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=False), st.text(max_size=20), st.binary(min_size=1, max_size=20),  # protocol 2 writes b"" as builtins.bytes(): refused, as torch does
)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), inner, max_size=5),
    ),
    max_leaves=40,
)


@settings(max_examples=300, deadline=None)
@given(values, st.integers(min_value=2, max_value=5))
def test_plain_data_matches_pickle(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert pr.load(data, TORCH_POLICY) == pickle.loads(data)


def test_describes_a_torch_state_dict_without_torch_objects(tmp_path):
    import zipfile

    import torch

    t = torch.arange(12, dtype=torch.float32).reshape(3, 4)
    torch.save({"w": t, "wt": t.t(), "p": torch.nn.Parameter(torch.ones(2)), "n": 3}, tmp_path / "m.pt")
    with zipfile.ZipFile(tmp_path / "m.pt") as z:
        data = z.read("m/data.pkl")
    obj = pr.load(data, TORCH_POLICY)
    assert obj["n"] == 3
    w, wt, p = obj["w"], obj["wt"], obj["p"]
    assert (w.shape, w.stride, w.dtype, w.storage.key) == ((3, 4), (4, 1), "float32", "0")
    assert (wt.shape, wt.stride) == ((4, 3), (1, 4)) and wt.storage.key == w.storage.key
    assert p.parameter and p.requires_grad
