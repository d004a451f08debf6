"""atheris target: the restricted unpickler (torch's data.pkl) on arbitrary bytes.
Allowed outcome: a value or FormatError (UnsafePickleError included). Anything else is a bug."""

import sys

import atheris

with atheris.instrument_imports():
    from shardscan import pickle_reader
    from shardscan.formats.torch_pickle import TORCH_POLICY
    from shardscan.errors import FormatError


def one(data: bytes) -> None:
    try:
        obj = pickle_reader.load(data, TORCH_POLICY)
        for _ in pickle_reader.iter_leaves(obj):
            pass
    except FormatError:
        pass


if __name__ == "__main__":
    atheris.Setup(sys.argv, one)
    atheris.Fuzz()
