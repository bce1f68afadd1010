#!/usr/bin/env python3
"""Makes the decoding-fidelity fixtures of issue 16 in tests/data/dicom from committed files.

  * `693_J2KI_UN.dcm`: pydicom's `693_J2KI.dcm` (signed 16-bit CT, JPEG 2000, negative stored
    values) with every top-level element but Pixel Data and the sequences re-encoded with VR UN
    (PS3.5 6.2.2: a writer that does not know an attribute's VR writes UN, the value as implicit
    VR little endian would hold it). A reader must take the dictionary's VR, as pydicom does:
    Modality "CT" (not "67\\84"), Pixel Representation 1 (US) so the values are signed.
  * `examples_palette_bigendian.dcm`: pydicom's `examples_palette.dcm` (8-bit PALETTE COLOR,
    16-bit LUTs), cropped to 64 x 320 pixels, then converted by DCMTK's `dcmconv +tb` to
    Explicit VR Big Endian, which writes the 8-bit Pixel Data as OW.
  * `examples_palette_segmented.dcm`: the same crop (Explicit VR Little Endian) with its three
    palette LUTs replaced by Segmented Palette Color LUT Data (PS3.3 C.7.9.2) that use every
    segment type: discrete, linear and indirect.

Usage: python tools/make_fidelity_fixtures.py tests/data/dicom
(needs pydicom 3 and DCMTK's dcmconv on PATH; ../shared/data/dicom/pydicom/693_J2KI.dcm is
read from the shared corpus.)
"""
import os
import struct
import subprocess
import sys
import tempfile

import numpy as np
import pydicom
from pydicom.dataelem import DataElement
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_data_element, write_file_meta_info


def element_bytes(elem, implicit):
    """The element as the given VR form (little endian) writes it."""
    fp = DicomBytesIO()
    fp.is_little_endian = True
    fp.is_implicit_VR = implicit
    write_data_element(fp, elem)
    return fp.getvalue()


def make_un(src, dst):
    """Writes the data set element by element (pydicom turns a UN element of a known tag back
    into the dictionary's VR, so the UN headers are written here)."""
    ds = pydicom.dcmread(src)
    body = DicomBytesIO()
    body.is_little_endian = True
    body.is_implicit_VR = False
    for elem in ds:
        if elem.VR == "SQ" or elem.tag == 0x7FE00010 or elem.tag.element == 0:
            if elem.tag.element != 0:  # group lengths would no longer be right
                body.write(element_bytes(elem, False))
            continue
        value = element_bytes(elem, True)[8:]
        body.write(struct.pack("<HH2sHI", elem.tag.group, elem.tag.element, b"UN", 0, len(value)))
        body.write(value)
    meta = DicomBytesIO()
    meta.is_little_endian = True
    meta.is_implicit_VR = False
    write_file_meta_info(meta, ds.file_meta, enforce_standard=True)
    with open(dst, "wb") as f:
        f.write(b"\0" * 128 + b"DICM" + meta.getvalue() + body.getvalue())


def cropped_palette():
    ds = pydicom.dcmread(os.path.join(FIXTURES, "examples_palette.dcm"))
    arr = ds.pixel_array[120:184, 100:420].copy()
    ds.Rows, ds.Columns = arr.shape
    ds.PixelData = arr.tobytes()
    # The ultrasound region geometry no longer matches the crop: drop it.
    del ds.SequenceOfUltrasoundRegions
    return ds


def make_bigendian(dst):
    ds = cropped_palette()
    with tempfile.TemporaryDirectory() as tmp:
        le = os.path.join(tmp, "le.dcm")
        ds.save_as(le, enforce_file_format=True)
        subprocess.run(["dcmconv", "+tb", le, dst], check=True)


def segments_for(lut):
    """A segmented encoding of a 256-entry 16-bit LUT using all three segment types: the first
    16 entries as a discrete segment, then linear segments of 16 entries ending on the LUT's
    values, and the last 32 entries as an indirect segment that repeats the first two segments
    (so those entries differ from the original LUT; pydicom's expansion is the reference)."""
    words = [0, 16] + [int(v) for v in lut[:16]]
    first_two_offset = 0  # word offset of the discrete segment
    for start in range(16, 224, 16):
        words += [1, 16, int(lut[start + 15])]
    words += [2, 2, first_two_offset & 0xFFFF, first_two_offset >> 16]
    return np.array(words, dtype="<u2")


def make_segmented(dst):
    ds = cropped_palette()
    for colour in ("Red", "Green", "Blue"):
        lut = np.frombuffer(ds[f"{colour}PaletteColorLookupTableData"].value, dtype="<u2")
        del ds[f"{colour}PaletteColorLookupTableData"]
        ds.add_new(f"Segmented{colour}PaletteColorLookupTableData", "OW", segments_for(lut).tobytes())
    ds.save_as(dst, enforce_file_format=True)


if __name__ == "__main__":
    FIXTURES = sys.argv[1] if len(sys.argv) > 1 else "tests/data/dicom"
    make_un("../shared/data/dicom/pydicom/693_J2KI.dcm", os.path.join(FIXTURES, "693_J2KI_UN.dcm"))
    make_bigendian(os.path.join(FIXTURES, "examples_palette_bigendian.dcm"))
    make_segmented(os.path.join(FIXTURES, "examples_palette_segmented.dcm"))
