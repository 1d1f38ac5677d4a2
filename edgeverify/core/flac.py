"""FLAC decoder in numpy for the valid files libsndfile refuses (12-, 20-, 32-bit and other sample sizes).

Every byte is untrusted: each field is range-checked against the spec (RFC 9639) and the stream's
STREAMINFO, every read is bounds-checked, and all work is linear in the input and the output frames
(the caller caps those and the decode work, where tiny frames and partitions count extra), so a
malformed file raises UnreadableAudioError and never hangs or allocates more than a few blocks. Rice codes are located with a short Python scan over a precomputed
"next 1 bit" table and their values extracted vectorised; LPC prediction, the only inherently
sequential step, is run in lockstep over many subframes of the same block size at once.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Iterator

import numpy as np

from ..errors import TooLongError, UnreadableAudioError

__all__ = ["is_flac", "FlacStream"]

_RATES = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
_BPS = (0, 8, 12, 0, 16, 20, 24, 32)
_LOCKSTEP_MIN = 4  # fewer subframes of one block size than this: plain per-sample loop
_BATCH_SAMPLES = 1 << 18  # decoded samples held before LPC restoration and hand-over (2 MiB as int64)
_SCAN_BITS = 1 << 16  # bits per "next 1" table
_FRAME_COST = 64  # sample-equivalents of decode time per frame and per residual partition (measured)
_PARTITION_COST = 8
_MAX_METADATA_BLOCKS = 1024  # real files have a handful; a million empty ones would only cost time


def _crc8_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8 = _crc8_table()


def _skip_id3(data: bytes) -> int:
    if len(data) >= 10 and data[:3] == b"ID3":
        size = 0
        for b in data[6:10]:
            size = (size << 7) | (b & 0x7F)
        return 10 + size + (10 if data[5] & 0x10 else 0)
    return 0


def is_flac(data: bytes) -> bool:
    pos = _skip_id3(data)
    return data[pos : pos + 4] == b"fLaC"


class _Bits:
    """Big-endian bit reader over bytes; every read past the end raises UnreadableAudioError."""

    def __init__(self, data: bytes, name: str):
        self.data = data
        self.arr = np.frombuffer(data, dtype=np.uint8)  # no copy
        self.nbits = 8 * len(data)
        self.pos = 0
        self.name = name
        self._ones: list[int] = []
        self._scan_end = -1

    def fail(self, what: str) -> UnreadableAudioError:
        return UnreadableAudioError(f"{self.name}: corrupt FLAC: {what}")

    def need(self, n: int) -> None:
        if self.pos + n > self.nbits:
            raise self.fail("truncated stream")

    def read(self, n: int) -> int:
        """n <= 64 unsigned bits."""
        if n == 0:
            return 0
        self.need(n)
        b0 = self.pos >> 3
        off = self.pos & 7
        nbytes = (off + n + 7) >> 3
        v = int.from_bytes(self.data[b0 : b0 + nbytes], "big")
        self.pos += n
        return (v >> (nbytes * 8 - off - n)) & ((1 << n) - 1)

    def signed(self, n: int) -> int:
        v = self.read(n)
        return v - (1 << n) if n and v >> (n - 1) else v

    def unary(self) -> int:
        """Count of 0 bits before the next 1."""
        t = self._next_one(self.pos)
        q = t - self.pos
        self.pos = t + 1
        return q

    def align(self) -> None:
        self.pos = (self.pos + 7) & ~7

    def _next_one(self, p: int) -> int:
        ones = self._ones
        i = bisect_left(ones, p)
        if i < len(ones):
            return ones[i]
        while True:
            if p >= self.nbits:
                raise self.fail("truncated stream")
            # table of the positions of 1 bits in the next _SCAN_BITS bits, starting at p's byte
            b0 = p >> 3
            chunk = self.arr[b0 : min(b0 + _SCAN_BITS // 8, len(self.data))]
            idx = np.flatnonzero(np.unpackbits(chunk)) + 8 * b0
            self._ones = ones = idx[idx >= p].tolist()
            if ones:
                return ones[0]
            p = 8 * (b0 + chunk.shape[0])

    def fields(self, starts: np.ndarray, widths: np.ndarray | int) -> np.ndarray:
        """Unsigned fields of the given widths (0..56 bits) at the given bit positions, vectorised."""
        # 8 bytes from each start's byte; past the end the last byte repeats, which only feeds bits beyond
        # the field (every caller has checked that its fields end inside the data)
        idx = np.minimum((starts >> 3)[:, None] + np.arange(8), len(self.data) - 1)
        raw = self.arr[idx].view(">u8").ravel().astype(np.uint64)
        w = np.asarray(widths, dtype=np.uint64)
        shift = np.uint64(64) - w - (starts & 7).astype(np.uint64)
        return ((raw >> shift) & ((np.uint64(1) << w) - np.uint64(1))).astype(np.int64)

    def signed_run(self, count: int, n: int) -> np.ndarray:
        """count consecutive signed n-bit values (n <= 33), vectorised."""
        self.need(count * n)
        if n == 0:
            return np.zeros(count, dtype=np.int64)
        v = self.fields(self.pos + n * np.arange(count, dtype=np.int64), n)
        self.pos += count * n
        v -= (v >> (n - 1)) << n
        return v

    def rice_scan(self, count: int, k: int, q: list, starts: list) -> None:
        """Locate count Rice codes with parameter k: append quotients and remainder positions."""
        p = self.pos
        ones = self._ones
        qa, sa = q.append, starts.append
        i = bisect_left(ones, p)
        for _ in range(count):
            if i >= len(ones):
                self._next_one(p)
                ones = self._ones
                i = 0
            t = ones[i]
            qa(t - p)
            sa(t + 1)
            p = t + 1 + k
            i = bisect_left(ones, p, i + 1) if k else i + 1
        if p > self.nbits:
            raise self.fail("truncated residual")
        self.pos = p


class FlacStream:
    """Parsed STREAMINFO; :meth:`blocks` yields float32 (frames, channels) arrays in [-1, 1)."""

    def __init__(self, data: bytes, name: str):
        self.name = name
        self.bits = r = _Bits(data, name)
        r.pos = 8 * _skip_id3(data)
        if r.read(32) != 0x664C6143:
            raise r.fail("no fLaC marker")
        last, first, count = 0, True, 0
        while not last:
            count += 1
            if count > _MAX_METADATA_BLOCKS:
                raise r.fail("too many metadata blocks")
            last, kind, length = r.read(1), r.read(7), r.read(24)
            if first != (kind == 0):
                raise r.fail("STREAMINFO is not the first metadata block")
            if kind == 0:
                if length != 34:
                    raise r.fail("bad STREAMINFO length")
                self.min_block, self.max_block = r.read(16), r.read(16)
                r.read(48)  # min/max frame size
                self.rate, self.channels, self.bps = r.read(20), r.read(3) + 1, r.read(5) + 1
                total = r.read(36)
                r.read(128)  # MD5
            elif kind == 127:
                raise r.fail("invalid metadata block type")
            else:
                r.need(8 * length)
                r.pos += 8 * length
            first = False
        if self.max_block < 16 or self.min_block < 16 or self.min_block > self.max_block:
            raise r.fail("bad block sizes in STREAMINFO")
        if self.rate == 0 or self.bps < 4:
            raise r.fail("bad sample rate or sample size in STREAMINFO")
        self.total_frames: int | None = total or None
        self.scale = np.float32(1.0 / (1 << (self.bps - 1)))
        self.work = 0

    def blocks(self, max_frames: int, max_work: int = 1 << 62) -> Iterator[np.ndarray]:
        """Decode frame by frame; stops with an error once more than max_frames are present.

        max_work bounds the CPU time in sample-equivalents: each sample costs 1, each frame
        _FRAME_COST and each residual partition _PARTITION_COST (what they take in Python relative to a
        sample), so a valid stream of thousands of 16-sample frames or 1-sample partitions cannot
        cost more than an ordinary one.
        """
        r = self.bits
        pending: list[list] = []  # [channel arrays, channel assignment, lpc jobs]
        held = done = 0
        short = False
        while r.pos + 16 <= r.nbits:
            if self.total_frames is not None and done + held >= self.total_frames:
                break  # trailing bytes (tags, padding) after the declared samples
            if short:
                raise r.fail("a frame shorter than 16 samples before the last one")
            frame = self._frame()
            short = frame[0][0].shape[0] < 16  # only the last frame may be that short (per-frame cost)
            self.work += _FRAME_COST + frame[0][0].shape[0] * self.channels
            if self.work > max_work:
                raise TooLongError(
                    f"{self.name}: FLAC decoding work over budget ({self.work} sample-equivalents after"
                    f" {done + held} samples: too many small frames or partitions)"
                )
            pending.append(frame)
            held += frame[0][0].shape[0]
            if done + held > max_frames:
                yield self._finish(pending)  # over the caller's limit: it raises on this block
                return
            if held * self.channels >= _BATCH_SAMPLES:
                yield self._finish(pending)
                pending, done, held = [], done + held, 0
        if r.pos < r.nbits and self.total_frames is None:
            raise r.fail(f"{(r.nbits - r.pos) // 8} stray bytes after the last frame")
        if pending:
            yield self._finish(pending)

    def _frame(self) -> list:
        r = self.bits
        start = r.pos
        if r.read(15) != 0x7FFC:
            raise r.fail(f"lost frame sync at byte {start // 8}")
        r.read(1)  # blocking strategy
        bs_code, rate_code, chan, size_code = r.read(4), r.read(4), r.read(4), r.read(3)
        if r.read(1):
            raise r.fail("reserved frame header bit set")
        # coded frame/sample number: UTF-8-like, 1..7 bytes
        lead = r.read(8)
        extra = 0
        while extra < 7 and lead & (0x80 >> extra):
            extra += 1
        if extra == 1 or extra == 7 and lead != 0xFE:
            raise r.fail("bad frame number")
        for _ in range(max(extra - 1, 0)):
            if r.read(8) >> 6 != 2:
                raise r.fail("bad frame number")
        if bs_code == 0:
            raise r.fail("reserved block size")
        block = (192 if bs_code == 1 else 576 << (bs_code - 2) if bs_code <= 5 else
                 r.read(8) + 1 if bs_code == 6 else r.read(16) + 1 if bs_code == 7 else 256 << (bs_code - 8))
        rate = (self.rate if rate_code == 0 else _RATES[rate_code] if rate_code < 12 else
                r.read(8) * 1000 if rate_code == 12 else r.read(16) if rate_code == 13 else
                r.read(16) * 10 if rate_code == 14 else -1)
        bps = self.bps if size_code == 0 else _BPS[size_code]
        nch = chan + 1 if chan < 8 else 2 if chan <= 10 else -1
        crc = 0
        for b in r.data[start // 8 : r.pos // 8]:
            crc = _CRC8[crc ^ b]
        if r.read(8) != crc:
            raise r.fail(f"frame header CRC mismatch at byte {start // 8}")
        if rate != self.rate or bps != self.bps or nch != self.channels:
            raise r.fail("frame header disagrees with STREAMINFO (rate, sample size or channels)")
        if block > self.max_block and block > 16:
            raise r.fail("frame larger than STREAMINFO's maximum block size")
        chans: list[np.ndarray] = []
        jobs: list[tuple] = []
        for c in range(nch):
            side = (chan == 8 and c == 1) or (chan == 9 and c == 0) or (chan == 10 and c == 1)
            chans.append(self._subframe(block, bps + side, jobs, c))
        r.align()
        r.read(16)  # CRC-16 of the frame (not verified: the header CRC and the checks above catch garbage)
        return [chans, chan, jobs]

    def _subframe(self, block: int, bps: int, jobs: list, c: int) -> np.ndarray:
        r = self.bits
        if r.read(1):
            raise r.fail("subframe padding bit set")
        kind = r.read(6)
        wasted = 0
        if r.read(1):
            wasted = r.unary() + 1
            if wasted >= bps:
                raise r.fail("wasted bits exceed sample size")
        bps -= wasted
        if kind == 0:
            x = np.full(block, r.signed(bps), dtype=np.int64)
        elif kind == 1:
            x = r.signed_run(block, bps)
        elif 8 <= kind <= 12:
            order = kind - 8
            x = _fixed_restore(self._residual(block, order, r.signed_run(order, bps)), order)
        elif kind >= 32:
            order = kind - 31
            warm = r.signed_run(order, bps)
            precision = r.read(4) + 1
            if precision == 16:
                raise r.fail("invalid LPC precision")
            shift = r.signed(5)
            if shift < 0:
                raise r.fail("negative LPC shift")
            coefs = r.signed_run(order, precision)
            x = self._residual(block, order, warm)
            jobs.append((c, order, coefs, shift, wasted))  # restored (and shifted) in _finish
            return x
        else:
            raise r.fail(f"reserved subframe type {kind}")
        if wasted:
            x <<= wasted
        return x

    def _residual(self, block: int, order: int, warm: np.ndarray) -> np.ndarray:
        r = self.bits
        method = r.read(2)
        if method > 1:
            raise r.fail("reserved residual coding method")
        pbits, escape = (4, 15) if method == 0 else (5, 31)
        porder = r.read(4)
        parts = 1 << porder
        if block % parts or block // parts < order or block < order:
            raise r.fail("bad residual partition order")
        q: list[int] = []  # quotient, or -1 for a raw (escaped) value
        starts: list[int] = []  # bit position of the remainder / raw value
        widths: list[int] = []
        self.work += _PARTITION_COST * parts
        for p in range(parts):
            n = block // parts - (order if p == 0 else 0)
            k = r.read(pbits)
            if k == escape:
                bits = r.read(5)
                r.need(n * bits)
                starts.extend(range(r.pos, r.pos + n * bits, bits) if bits else [r.pos] * n)
                q.extend([-1] * n)
                widths.extend([bits] * n)
                r.pos += n * bits
            else:
                r.rice_scan(n, k, q, starts)
                widths.extend([k] * n)
        x = np.empty(block, dtype=np.int64)
        x[:order] = warm
        if block > order:
            qa, w = np.array(q, dtype=np.int64), np.array(widths, dtype=np.int64)
            f = r.fields(np.array(starts, dtype=np.int64), w)
            raw = qa < 0
            if np.any((qa >> (33 - w)) > 0):
                raise r.fail("residual out of range")
            u = (qa << w) | f
            rice = (u >> 1) ^ -(u & 1)
            signed = f - ((f >> np.maximum(w - 1, 0)) << w) * (w > 0)
            x[order:] = np.where(raw, signed, rice)
        return x

    def _finish(self, frames: list[list]) -> np.ndarray:
        """Restore LPC subframes (lockstep per block size), undo stereo decorrelation, scale to float32."""
        groups: dict[int, list] = {}
        for chans, _, jobs in frames:
            for job in jobs:
                groups.setdefault(chans[job[0]].shape[0], []).append((chans, job))
        for items in groups.values():
            if len(items) < _LOCKSTEP_MIN:
                for chans, job in items:
                    try:
                        _lpc_scalar(chans[job[0]], job[1], job[2], job[3])
                    except OverflowError:
                        raise self.bits.fail("sample out of range for the stream's sample size") from None
            else:
                _lpc_lockstep([chans[job[0]] for chans, job in items], [job[1:4] for _, job in items])
            for chans, job in items:
                chans[job[0]] <<= job[4]
        out = np.empty((sum(f[0][0].shape[0] for f in frames), self.channels), dtype=np.float32)
        pos = 0
        lim = 1 << (self.bps - 1)
        for chans, chan, _ in frames:
            if chan == 8:
                chans = [chans[0], chans[0] - chans[1]]
            elif chan == 9:
                chans = [chans[0] + chans[1], chans[1]]
            elif chan == 10:
                mid = (chans[0] << 1) | (chans[1] & 1)
                chans = [(mid + chans[1]) >> 1, (mid - chans[1]) >> 1]
            n = chans[0].shape[0]
            for c, x in enumerate(chans):
                if x.size and (int(x.max()) >= lim or int(x.min()) < -lim):
                    raise self.bits.fail("sample out of range for the stream's sample size")
                out[pos : pos + n, c] = x * self.scale
            pos += n
        return out


def _fixed_restore(e: np.ndarray, order: int) -> np.ndarray:
    """Undo a FIXED predictor: the residual is the order-th difference of the signal."""
    if order == 0:
        return e
    warm = e[:order]
    # differences of the warm-up at each level j: diffs[j] = j-th difference of warm (length order - j)
    diffs = [warm]
    for _ in range(order):
        diffs.append(np.diff(diffs[-1]))
    cur = e[order:]  # order-th difference for n >= order
    for j in range(order - 1, -1, -1):
        last = diffs[j][-1]  # j-th difference at index order - 1
        cur = last + np.cumsum(cur)
    return np.concatenate((warm, cur))


def _lpc_scalar(x: np.ndarray, order: int, coefs: np.ndarray, shift: int) -> None:
    """In-place LPC restoration of one subframe, Python integers (exact, no overflow)."""
    v = x.tolist()
    c = coefs[::-1].tolist()  # multiplies v[n-order .. n-1]
    for n in range(order, len(v)):
        v[n] += sum(map(int.__mul__, c, v[n - order : n])) >> shift
    if v and (max(v) >= 1 << 40 or min(v) < -(1 << 40)):
        raise OverflowError("LPC output out of range")
    x[:] = v


def _lpc_lockstep(xs: list[np.ndarray], jobs: list[tuple]) -> None:
    """LPC restoration of many same-length subframes at once: one vector step per sample index."""
    s, block = len(xs), xs[0].shape[0]
    p = max(j[0] for j in jobs)
    xp = np.zeros((s, p + block), dtype=np.int64)
    for i, x in enumerate(xs):
        xp[i, p:] = x
    coef = np.zeros((s, p), dtype=np.int64)
    orders = np.array([j[0] for j in jobs])
    shifts = np.array([j[2] for j in jobs], dtype=np.int64)
    for i, (order, cf, _) in enumerate(jobs):
        coef[i, p - order :] = cf[::-1]
    lo = int(orders.min())
    for n in range(lo, block):
        pred = np.einsum("ij,ij->i", xp[:, n : n + p], coef) >> shifts
        active = orders <= n
        xp[active, p + n] += pred[active]
    for i, x in enumerate(xs):
        x[:] = xp[i, p:]
