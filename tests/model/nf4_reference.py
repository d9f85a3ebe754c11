"""Byte-for-byte check of shardtune's NF4 storage against an independent Python implementation of
bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64, compress_statistics=True) layout.

Written from bitsandbytes' documented semantics (functional.quantize_4bit / quantize_blockwise /
create_dynamic_map and its reference "default" backend); imports neither bitsandbytes nor shardtune.
  * 4-bit stage: the flattened weight in blocks of 64; absmax = max |w| per block (fp32);
    scaled = clamp(w * (1 / absmax), -1, 1); code = torch.bucketize(scaled, midpoints of the NF4
    values) (nearest value, ties to the lower code, as the CUDA decision tree); two codes per byte,
    the first element in the high nibble.
  * double quantization: offset = mean(absmax); absmax - offset quantized like quantize_blockwise
    with blocksize 256 and the signed 8-bit dynamic map (one fp32 absmax per 256-block).
Two documented choices of shardtune, checked here as such: the mean is taken in fp64 and rounded once
(bitsandbytes: torch's fp32 mean; asserted to agree within 2 ulp), and the last partial 256-block uses
the reciprocal like every other block (as bitsandbytes' CUDA kernel).

usage: nf4_reference.py make OUT      (NF4_DUMP=path of the nf4_dump test binary in the environment)
"""
import math
import os
import subprocess
import sys

import numpy as np
import torch

# bitsandbytes get_4bit_type("nf4") (QLoRA Appendix E).
NF4 = torch.tensor([
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
    -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
    0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
    0.7229568362236023, 1.0], dtype=torch.float32)

# The thresholds of bitsandbytes' CUDA dQuantizeNF4 decision tree (x > t picks the upper side), sorted:
# a second, independent statement of "nearest NF4 value" to cross-check the midpoints against.
CUDA_NF4_THRESHOLDS = torch.tensor([
    -0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544,
    -0.23460740596055984, -0.13791173323988914, -0.045525018125772476, 0.03979014977812767,
    0.1202552504837513, 0.2035212516784668, 0.2920137718319893, 0.3893125355243683,
    0.5016634166240692, 0.6427869200706482, 0.8614784181118011], dtype=torch.float32)


def dynamic_map():
    """create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): with 7 non-sign bits and up to
    7 exponent bits, exponent level i (0..6) holds the 2^i midpoints of linspace(0.1, 1, 2^i + 1)
    scaled by 10^(i - 6), with both signs; then 0 and 1; 256 values, sorted."""
    values = [0.0, 1.0]
    for level in range(7):
        edges = torch.linspace(0.1, 1, 2 ** level + 1, dtype=torch.float32)
        centers = (edges[:-1] + edges[1:]) / 2.0
        magnitude = 10 ** (level - 6)
        values += (magnitude * centers).tolist() + ((-magnitude) * centers).tolist()
    assert len(values) == 256, len(values)
    return torch.tensor(sorted(values), dtype=torch.float32)


def blockwise(x, code, block):
    """Nearest-code blockwise quantization of fp32 x (1-D): (codes uint8, absmax fp32 per block)."""
    n = x.numel()
    blocks = -(-n // block)
    padded = torch.cat([x, x.new_zeros(blocks * block - n)]).view(blocks, block)  # zeros leave absmax as is
    absmax = padded.abs().max(dim=1).values
    inv = 1.0 / absmax.clamp(min=1e-38)  # an all-zero block: scaled 0 -> the code of 0.0
    scaled = torch.clamp(padded * inv[:, None], -1, 1).reshape(-1)[:n]
    mids = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, mids).to(torch.uint8), absmax, scaled


def quantize_4bit_nf4(w, double_quant):
    flat = w.reshape(-1).float()
    codes, absmax, scaled = blockwise(flat, NF4, 64)
    cuda_codes = torch.bucketize(scaled, CUDA_NF4_THRESHOLDS).to(torch.uint8)
    assert torch.equal(codes, cuda_codes), "midpoints and the CUDA decision tree disagree on this tensor"
    packed = (codes[0::2] << 4) | codes[1::2]
    out = {"packed": packed}
    if not double_quant:
        out["absmax"] = absmax
        out["dequant"] = (NF4[codes.long()].view(-1, 64) * absmax[:, None]).reshape(-1)
        return out
    offset = np.float32(math.fsum(absmax.double().tolist()) / absmax.numel())
    torch_mean = absmax.mean().item()  # bitsandbytes' own fp32 mean
    assert abs(float(offset) - torch_mean) <= 2 * np.spacing(np.float32(torch_mean)), (offset, torch_mean)
    centered = absmax - torch.tensor(offset, dtype=torch.float32)
    dyn = dynamic_map()
    q2, scale2, _ = blockwise(centered, dyn, 256)
    # dequantize_4bit(nested): dequantize_blockwise (code[q] * absmax) then += offset, each in fp32.
    absmax_dq = dyn[q2.long()] * scale2.repeat_interleave(256)[: q2.numel()]
    absmax_dq = absmax_dq + torch.tensor(offset, dtype=torch.float32)
    out.update(absmax_q=q2, absmax_scale=scale2, offset=torch.tensor([offset], dtype=torch.float32),
               dequant=(NF4[codes.long()].view(-1, 64) * absmax_dq[:, None]).reshape(-1))
    return out


def fixed_tensor():
    """153 x 256: 612 blocks of 64, so 3 absmax blocks of 256 (the last one partial), rows over several
    decades of scale, one all-zero block, one outlier, one block made of exact NF4 values."""
    g = torch.Generator().manual_seed(1234)
    w = torch.randn(153, 256, generator=g) * torch.exp(torch.randn(153, 1, generator=g) * 1.5) * 0.02
    flat = w.view(-1)
    flat[5 * 64:6 * 64] = 0.0
    flat[1000] = 0.9
    flat[7 * 64:8 * 64] = NF4.repeat(4) * 0.03125  # a power of two: w / absmax is exactly a code
    return w


def read(path, dtype):
    return torch.from_numpy(np.fromfile(path, dtype=dtype).copy())


def compare(name, ours, ref):
    ref = ref.contiguous().view(torch.uint8).reshape(-1) if ref.dtype != torch.uint8 else ref.reshape(-1)
    ours = ours.contiguous().view(torch.uint8).reshape(-1) if ours.dtype != torch.uint8 else ours.reshape(-1)
    if ours.numel() != ref.numel():
        raise AssertionError(f"{name}: {ours.numel()} bytes, reference {ref.numel()}")
    bad = (ours != ref).nonzero().flatten()
    if bad.numel():
        i = bad[0].item()
        raise AssertionError(f"{name}: {bad.numel()} of {ref.numel()} bytes differ; first at byte {i}: "
                             f"ours {ours[i].item():#04x}, reference {ref[i].item():#04x}")
    print(f"  {name}: {ref.numel()} bytes equal")


def make(out):
    dump = os.environ.get("NF4_DUMP")
    if not dump or not os.path.exists(dump):
        raise SystemExit(f"NF4_DUMP={dump!r}: set it to the nf4_dump binary")
    os.makedirs(out, exist_ok=True)
    w = fixed_tensor()
    inp = os.path.join(out, "input.f32")
    w.numpy().astype("<f4").tofile(inp)
    subprocess.run([dump, inp, str(w.shape[0]), str(w.shape[1]), out], check=True)

    compare("code_table", read(os.path.join(out, "code_table.f32"), "<f4"), NF4)
    compare("dynamic_map", read(os.path.join(out, "dynamic_map.f32"), "<f4"), dynamic_map())
    cases = [("dq", w, True), ("plain", w, False), ("bf16", w.bfloat16(), True)]
    for case, tensor, dq in cases:
        ref = quantize_4bit_nf4(tensor, dq)
        d = os.path.join(out, case)
        print(f"{case}:")
        compare(f"{case}/packed", read(os.path.join(d, "packed.u8"), np.uint8), ref["packed"])
        if dq:
            compare(f"{case}/absmax_q", read(os.path.join(d, "absmax_q.u8"), np.uint8), ref["absmax_q"])
            compare(f"{case}/absmax_scale", read(os.path.join(d, "absmax_scale.f32"), "<f4"), ref["absmax_scale"])
            compare(f"{case}/offset", read(os.path.join(d, "offset.f32"), "<f4"), ref["offset"])
        else:
            compare(f"{case}/absmax", read(os.path.join(d, "absmax.f32"), "<f4"), ref["absmax"])
        compare(f"{case}/dequant", read(os.path.join(d, "dequant.f32"), "<f4"), ref["dequant"])
    packed = read(os.path.join(out, "dq", "packed.u8"), np.uint8)
    assert (packed[5 * 32:6 * 32] == 0x77).all(), "the all-zero block is not code 7 (0.0)"
    print("nf4 layout: equal to the bitsandbytes reference")


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] != "make":
        raise SystemExit(__doc__)
    torch.set_num_threads(1)
    make(sys.argv[2])
