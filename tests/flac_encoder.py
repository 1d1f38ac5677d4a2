"""Minimal FLAC encoder for tests: any sample size 4..32 bits, which the `flac` tool and libsndfile cannot
write (12- and 20-bit). Subframes CONSTANT / VERBATIM / FIXED / LPC, Rice partitions (with escape codes),
wasted bits and all stereo decorrelation modes, so the decoder's every path gets real bit streams."""

from __future__ import annotations

import numpy as np

_SIZE_CODES = {8: 1, 12: 2, 16: 4, 20: 5, 24: 6, 32: 7}


def crc(data: bytes, poly: int, width: int) -> int:
    top, mask, c = 1 << (width - 1), (1 << width) - 1, 0
    for b in data:
        c ^= b << (width - 8)
        for _ in range(8):
            c = ((c << 1) ^ poly) & mask if c & top else (c << 1) & mask
    return c


class _Writer:
    def __init__(self) -> None:
        self.acc, self.n, self.out = 0, 0, bytearray()

    def put(self, v: int, bits: int) -> None:
        self.acc = (self.acc << bits) | (v & ((1 << bits) - 1))
        self.n += bits
        while self.n >= 8:
            self.n -= 8
            self.out.append((self.acc >> self.n) & 0xFF)
        self.acc &= (1 << self.n) - 1

    def align(self) -> None:
        if self.n:
            self.put(0, 8 - self.n)


def _rice(w: _Writer, res: np.ndarray, porder: int, first: int) -> None:
    w.put(1, 2)  # 5-bit Rice parameters
    w.put(porder, 4)
    parts = 1 << porder
    size = (len(res) + first) // parts
    pos = 0
    for p in range(parts):
        part = res[pos : pos + size - (first if p == 0 else 0)]
        pos += len(part)
        u = [(int(v) << 1) ^ (int(v) >> 63) for v in part]  # zigzag
        mean = sum(u) / max(len(u), 1)
        k = max(0, int(np.log2(mean + 1)))
        if k > 20 or p % 7 == 3:  # escape partition: raw signed values (also exercised on purpose)
            bits = max((abs(int(v)) for v in part), default=0).bit_length() + 1
            w.put(31, 5)
            w.put(bits, 5)
            for v in part:
                w.put(int(v), bits)
            continue
        w.put(k, 5)
        for v in u:
            q = v >> k
            w.put(1, q + 1)  # q zeros then a 1
            if k:
                w.put(v, k)


def _subframe(w: _Writer, x: np.ndarray, bps: int, kind: str, porder: int) -> None:
    wasted = 0
    if x.any():
        while wasted < bps - 1 and not np.any(x & ((1 << (wasted + 1)) - 1)):
            wasted += 1
    x = x >> wasted
    bps -= wasted
    n = len(x)

    def head(code: int) -> None:
        w.put(0, 1)
        w.put(code, 6)
        if wasted:
            w.put(1, 1)
            w.put(1, wasted)  # unary wasted - 1: zeros then 1
        else:
            w.put(0, 1)

    if np.all(x == x[0]):
        head(0)
        w.put(int(x[0]), bps)
    elif kind == "verbatim":
        head(1)
        for v in x:
            w.put(int(v), bps)
    elif kind.startswith("fixed"):
        order = int(kind[5:])
        head(8 + order)
        for v in x[:order]:
            w.put(int(v), bps)
        _rice(w, np.diff(x, n=order), porder, order)
    else:  # lpc: least-squares coefficients, quantised; any coefficients give an exact round trip
        order, prec, shift = int(kind[3:]), 12, 9
        X = np.stack([x[order - 1 - i : n - 1 - i] for i in range(order)], 1).astype(np.float64)
        c = np.linalg.lstsq(X, x[order:].astype(np.float64), rcond=None)[0]
        q = np.clip(np.round(c * (1 << shift)), -(1 << (prec - 1)), (1 << (prec - 1)) - 1).astype(np.int64)
        pred = (X.astype(np.int64) @ q) >> shift
        head(31 + order)
        for v in x[:order]:
            w.put(int(v), bps)
        w.put(prec - 1, 4)
        w.put(shift, 5)
        for v in q:
            w.put(int(v), prec)
        _rice(w, x[order:] - pred, porder, order)


def encode_flac(
    x: np.ndarray,
    rate: int,
    bps: int,
    block: int = 4096,
    kinds: tuple[str, ...] = ("lpc8", "fixed2", "verbatim", "lpc1", "fixed0", "fixed4", "lpc32"),
    stereo: tuple[int, ...] = (0, 8, 9, 10),
    porder: int = 2,
    total: bool = True,
) -> bytes:
    """x: int64 (frames, channels) in bps-bit range. Frame i uses kinds[i % len] and, for stereo,
    channel assignment stereo[i % len] (0 = independent, 8 left/side, 9 side/right, 10 mid/side)."""
    frames, ch = x.shape
    w = _Writer()
    w.out += b"fLaC"
    w.put(1, 1)
    w.put(0, 7)
    w.put(34, 24)
    for v, bits in ((block, 16), (block, 16), (0, 24), (0, 24), (rate, 20), (ch - 1, 3), (bps - 1, 5)):
        w.put(v, bits)
    w.put(frames if total else 0, 36)
    w.put(0, 128)
    for fi, start in enumerate(range(0, frames, block)):
        blk = x[start : start + block]
        n = len(blk)
        assign = (stereo[fi % len(stereo)] or ch - 1) if ch == 2 else ch - 1
        chans, widths = [blk[:, c] for c in range(ch)], [bps] * ch
        if assign == 8:
            chans, widths = [blk[:, 0], blk[:, 0] - blk[:, 1]], [bps, bps + 1]
        elif assign == 9:
            chans, widths = [blk[:, 0] - blk[:, 1], blk[:, 1]], [bps + 1, bps]
        elif assign == 10:
            chans, widths = [(blk[:, 0] + blk[:, 1]) >> 1, blk[:, 0] - blk[:, 1]], [bps, bps + 1]
        hstart = len(w.out)
        w.put(0xFFF8, 16)
        w.put(7, 4)  # block size: 16 bits at the end of the header
        w.put(0, 4)  # sample rate: from STREAMINFO
        w.put(assign, 4)
        w.put(_SIZE_CODES.get(bps, 0), 3)
        w.put(0, 1)
        if fi < 0x80:  # frame number, UTF-8 style
            w.put(fi, 8)
        else:
            more = 1 if fi < 0x800 else 2 if fi < 0x10000 else 3
            w.put((0xFF00 >> (more + 1)) & 0xFF | fi >> (6 * more), 8)
            for i in range(more - 1, -1, -1):
                w.put(0x80 | (fi >> (6 * i)) & 0x3F, 8)
        w.put(n - 1, 16)
        w.put(crc(bytes(w.out[hstart:]), 0x07, 8), 8)
        kind = kinds[fi % len(kinds)]
        for c in range(ch):
            order = int("".join(ch_ for ch_ in kind if ch_.isdigit()) or 0)
            use = kind if n > order + 1 and (n >> porder) > order and n % (1 << porder) == 0 else "verbatim"
            _subframe(w, chans[c].astype(np.int64), widths[c], use, porder)
        w.align()
        w.put(crc(bytes(w.out[hstart:]), 0x8005, 16), 16)
    return bytes(w.out)
