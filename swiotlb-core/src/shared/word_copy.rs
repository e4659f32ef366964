//! The portable copies of shared bytes: Relaxed atomic accesses of one aligned 64-bit word
//! each.
//!
//! Whole words inside a range; at its edges a load of the whole word (read) or a clear and a
//! set of only the range's bytes (write: two read-modify-writes that leave the other bytes
//! alone). Every access has the same size, which matters: racing atomic accesses of different
//! sizes are undefined (Miri reports them). This is the copy under Miri and loom (which check
//! it) and on targets without the byte copies of `byte_copy`; Relaxed word accesses compile to
//! plain 8-byte moves, which the compiler may not merge into vector moves.
//!
//! Chosen over `memcpy` when there was no byte copy (volatile copies were no option: racing
//! volatile accesses are still data races to Miri, and neither vectorises): on the development
//! machine a cache-hot 4 KiB copy took 110 ns against 100 ns for an aligned `memcpy`, into
//! cold memory 233 ns against 338 ns; where `memcpy` stores 32 bytes a cycle, 8-byte stores
//! cost up to 4 times as much.

use super::{Words, CHUNK, WORD};
use dma_sync::atomic::{untracked::AtomicU64, Ordering::Relaxed};
use std::mem::MaybeUninit;

/// Copy the bytes of `src` into `out` (of length `src.len`).
pub(super) fn load(src: Words<'_>, out: &mut [u8]) {
    let p = split(src);
    let (out_head, rest) = out.split_at_mut(p.head.map_or(0, |h| h.2));
    let (out_mid, out_tail) = rest.split_at_mut(p.mid.len() * WORD);
    if let Some((w, at, n)) = p.head {
        out_head.copy_from_slice(&w.load(Relaxed).to_ne_bytes()[at..at + n]);
    }
    for (o, w) in out_mid.chunks_exact_mut(WORD).zip(p.mid) {
        o.copy_from_slice(&w.load(Relaxed).to_ne_bytes());
    }
    if let Some((w, n)) = p.tail {
        out_tail.copy_from_slice(&w.load(Relaxed).to_ne_bytes()[..n]);
    }
}

/// Copy the bytes of `src` into `out` (of length `src.len`), zeroed first (a word copy cannot
/// write uninitialised bytes without more unsafe code, and this copy is not the fast one).
pub(super) fn load_uninit<'o>(src: Words<'_>, out: &'o mut [MaybeUninit<u8>]) -> &'o mut [u8] {
    let out = super::zeroed(out);
    load(src, out);
    out
}

/// Copy `data` (of length `dst.len`) into the bytes of `dst`.
pub(super) fn store(dst: Words<'_>, data: &[u8]) {
    let p = split(dst);
    let (data_head, rest) = data.split_at(p.head.map_or(0, |h| h.2));
    let (data_mid, data_tail) = rest.split_at(p.mid.len() * WORD);
    if let Some((w, at, _)) = p.head {
        store_partial(w, at, data_head);
    }
    for (d, w) in data_mid.chunks_exact(WORD).zip(p.mid) {
        let mut v = [0u8; WORD];
        v.copy_from_slice(d);
        w.store(u64::from_ne_bytes(v), Relaxed);
    }
    if let Some((w, _)) = p.tail {
        store_partial(w, 0, data_tail);
    }
}

/// Copy the bytes of `src` to `dst` (of the same length): word to word when both ranges
/// start at the same offset in a word (the common case: pools and regions are page-aligned,
/// bounce addresses keep the original's low bits), else through a stack buffer.
pub(super) fn copy(src: Words<'_>, dst: Words<'_>) {
    if src.start % WORD != dst.start % WORD {
        let mut buf = [0u8; CHUNK];
        for (off, n) in super::pieces(src.len) {
            load(src.sub(off, n), &mut buf[..n]);
            store(dst.sub(off, n), &buf[..n]);
        }
        return;
    }
    // Same offset in a word and same length: the parts match one to one.
    let (s, d) = (split(src), split(dst));
    if let (Some((s, at, n)), Some((d, _, _))) = (s.head, d.head) {
        store_partial(d, at, &s.load(Relaxed).to_ne_bytes()[at..at + n]);
    }
    for (s, d) in s.mid.iter().zip(d.mid) {
        d.store(s.load(Relaxed), Relaxed);
    }
    if let (Some((s, n)), Some((d, _))) = (s.tail, d.tail) {
        store_partial(d, 0, &s.load(Relaxed).to_ne_bytes()[..n]);
    }
}

/// Zero the bytes of `dst`.
pub(super) fn zero(dst: Words<'_>) {
    let p = split(dst);
    if let Some((w, at, n)) = p.head {
        store_partial(w, at, &[0; WORD][..n]);
    }
    for w in p.mid {
        w.store(0, Relaxed);
    }
    if let Some((w, n)) = p.tail {
        store_partial(w, 0, &[0; WORD][..n]);
    }
}

/// Store `bytes` at byte `at` of `word`, leaving its other bytes alone.
fn store_partial(word: &AtomicU64, at: usize, bytes: &[u8]) {
    let (mut value, mut mask) = ([0u8; WORD], [0u8; WORD]);
    value[at..at + bytes.len()].copy_from_slice(bytes);
    mask[at..at + bytes.len()].fill(0xFF);
    let mask = u64::from_ne_bytes(mask);
    word.fetch_and(!mask, Relaxed);
    word.fetch_or(u64::from_ne_bytes(value), Relaxed);
}

/// The range as a partial first word, whole words, and a partial last word.
fn split(w: Words<'_>) -> Parts<'_> {
    let end = w.start + w.len;
    let at = w.start % WORD;
    let head_len = if at == 0 { 0 } else { (WORD - at).min(w.len) };
    let head = (head_len > 0).then(|| (&w.words[w.start / WORD], at, head_len));
    // Word-aligned, or the end of a range lying inside its first word.
    let pos = w.start + head_len;
    if pos == end {
        return Parts {
            head,
            mid: &[],
            tail: None,
        };
    }
    let tail_len = end % WORD;
    Parts {
        head,
        mid: &w.words[pos / WORD..end / WORD],
        tail: (tail_len > 0).then(|| (&w.words[end / WORD], tail_len)),
    }
}

/// A range of bytes split at word boundaries.
struct Parts<'a> {
    /// A first word the range starts inside: the word, the range's first byte in it, and
    /// the range's bytes in it.
    head: Option<(&'a AtomicU64, usize, usize)>,
    /// Whole words.
    mid: &'a [AtomicU64],
    /// A last word the range ends inside: the word and the range's bytes in it.
    tail: Option<(&'a AtomicU64, usize)>,
}
