#!/usr/bin/env python3
"""Rewrites CUDA kernel launches for the CPU emulator (tests/gpu/emu/cuda_emu.h):
   name<<<grid, block, smem, stream>>>(args);  ->  mk_emu_launch(grid, block, smem, stream, name, args);
(smem and stream default to 0 when the launch leaves them out)
Usage: emu_transform.py IN.cu OUT.cpp"""
import os
import re
import sys

LAUNCH = re.compile(r"([A-Za-z_]\w*(?:<[^<>;]*>)?)<<<(.*?)>>>\((.*?)\);", re.S)


def pad_config(cfg):
    """grid, block[, smem[, stream]] -> all four (top-level commas only)."""
    depth, parts, cur = 0, [], ""
    for ch in cfg:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    parts += ["0"] * (4 - len(parts))
    return ", ".join(p.strip() for p in parts)


def main():
    src, dst = sys.argv[1], sys.argv[2]
    text = open(src).read()
    out, n = LAUNCH.subn(lambda m: f"mk_emu_launch({pad_config(m.group(2))}, {m.group(1)}, {m.group(3)});", text)
    if "<<<" in out:
        sys.exit(f"{src}: a kernel launch was not rewritten")
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(dst, "w") as f:
        f.write(f"// generated from {src} by emu_transform.py ({n} launches)\n#line 1 \"{src}\"\n")
        f.write(out)


if __name__ == "__main__":
    main()
