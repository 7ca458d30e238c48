#!/usr/bin/env python3
"""Writes the tensor table of a GGUF file as TSV, read by an independent implementation (the
`gguf` Python package, GGUFReader), for tests/model/test_gguf_model.c.

Columns: name, type id (GGML numbering), type name, dims (ne[0],ne[1],... in GGUF order),
absolute file offset of the data, data bytes. Comment lines start with '#'.

Usage: python3 make_tensor_table.py [MODEL.gguf] > smollm2_tensors.tsv
Default model: ~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf. Not run by CI.
"""
import os
import sys
from importlib.metadata import version

from gguf import GGUFReader


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else os.path.expanduser(
        "~/.cache/morphkv/SmolLM2-135M-Instruct.Q4_1.gguf")
    reader = GGUFReader(path)
    out = sys.stdout
    out.write(f"# tensor table of {os.path.basename(path)} ({len(reader.tensors)} tensors), "
              f"from gguf-py {version('gguf')} GGUFReader; "
              "made by make_tensor_table.py\n")
    out.write("# name\ttype_id\ttype\tne\tfile_offset\tnbytes\n")
    for t in reader.tensors:
        ne = ",".join(str(int(d)) for d in t.shape)  # GGUF order: ne[0] first
        out.write(f"{t.name}\t{int(t.tensor_type)}\t{t.tensor_type.name}\t{ne}\t"
                  f"{int(t.data_offset)}\t{int(t.n_bytes)}\n")


if __name__ == "__main__":
    main()
