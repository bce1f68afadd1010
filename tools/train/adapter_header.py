"""Rewrite the `adapter` metadata in a MeLo adapter's safetensors header, leaving every
tensor byte as it is (used by scrub_paths.py and model_facts.py)."""

import json
import os
import struct


def read(path):
    """(header, adapter metadata, tensor bytes) of an adapter file."""
    blob = open(path, "rb").read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    return header, json.loads(header["__metadata__"]["adapter"]), blob[8 + n:]


def write(path, header, meta, data):
    """Writes `meta` back into `header` and the file atomically (temp + rename)."""
    header["__metadata__"]["adapter"] = json.dumps(meta, separators=(",", ":"), ensure_ascii=False)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8 bytes
    new = struct.pack("<Q", len(text)) + text + data
    assert new[8 + len(text):] == data, "tensor bytes changed"
    with open(path + ".tmp", "wb") as f:
        f.write(new)
    os.replace(path + ".tmp", path)
