//! The x86-64 copies of shared bytes, in inline assembly: 32-byte AVX moves where the
//! processor has AVX, `rep movsb` otherwise and for copies under 32 bytes, `rep stosb` to zero.
//!
//! The word copies of `word_copy` cannot be vectorised (the compiler may not merge atomic
//! accesses): a 4 KiB word copy took about 2.5 times an aligned `memcpy` (module `shared` has
//! the measurements). `rep movsb` is the copy glibc's `memcpy` itself uses from 2–4 KiB up on
//! processors with fast string operations (ERMS, FSRM for short copies), and runs at its
//! speed; on older processors it is slower, never incorrect. The AVX loop is faster still where
//! it was measured (2-vCPU AMD EPYC with ERMS and FSRM, cache-hot): a page-aligned 4 KiB copy
//! took 34.6 ns against 40.9 ns for `rep movsb` and 45 ns for glibc's `memcpy`, and into a
//! destination that is not 64-byte aligned 49 ns where `rep movsb` and `memcpy` took 1.1 to
//! 1.6 µs (the string instruction's fast mode needs an aligned destination there); from 16 KiB
//! up all three ran at the same speed.
//!
//! Why this is sound although a device may write the bytes during the copy: both copies are,
//! at the hardware level, ordinary loads and stores of which every byte is single-copy atomic
//! (x86 never tears a byte; a string instruction or a 32-byte move may split into smaller
//! accesses in any order, but not a byte), and the compiler treats the assembly as opaque code
//! of which it knows only the pointers it receives. A copy is therefore exactly an "atomic
//! per-byte memcpy" (RFC 3301): a sequence of Relaxed one-byte atomic loads and stores, which
//! may race with other atomic accesses of the same size without undefined behaviour. No
//! non-atomic Rust access to racing bytes exists and no reference to them is made. On the
//! targets using this module *every* access to shared bytes goes through it (reads, writes,
//! copies, zeroing, device-side and CPU-side), so all racing accesses have one size (a byte);
//! the word copies of `word_copy` are never mixed into the same memory there.
//!
//! Overlapping ranges (only possible between two ranges of one region) are copied forwards,
//! a block of up to 128 bytes loaded before it is stored, and the AVX copy's last 32 bytes are
//! moved again from the source (it ends with one 32-byte move ending at the last byte): the
//! result is unspecified bytes, never undefined behaviour, as with the word copies. The
//! direction flag is clear on entry to every inline assembly block (a rule of Rust's `asm!` on
//! x86), so the string instructions move forwards.

use super::Words;
use std::arch::asm;
use std::mem::MaybeUninit;

/// Copy the bytes of `src` into `out` (of length `src.len`).
pub(super) fn load(src: Words<'_>, out: &mut [u8]) {
    assert_eq!(src.len, out.len(), "copy lengths differ");
    // SAFETY: `src` is valid for reads of `len` bytes (a range of live shared words, see
    // `first_byte`), `out` for writes of as many; the copy is a sequence of byte
    // accesses (module documentation).
    unsafe { move_bytes(out.as_mut_ptr(), first_byte(src), src.len) }
}

/// Copy the bytes of `src` into `out` (of length `src.len`, not necessarily initialised) and
/// return it initialised.
pub(super) fn load_uninit<'o>(src: Words<'_>, out: &'o mut [MaybeUninit<u8>]) -> &'o mut [u8] {
    assert_eq!(src.len, out.len(), "copy lengths differ");
    let len = out.len();
    let out = out.as_mut_ptr().cast::<u8>();
    // SAFETY: as in `load` (writing uninitialised bytes through a raw pointer is allowed).
    unsafe { move_bytes(out, first_byte(src), len) };
    // SAFETY: the copy initialised all `len` bytes; the slice borrows `out`'s buffer.
    unsafe { std::slice::from_raw_parts_mut(out, len) }
}

/// Copy `data` (of length `dst.len`) into the bytes of `dst`.
pub(super) fn store(dst: Words<'_>, data: &[u8]) {
    assert_eq!(dst.len, data.len(), "copy lengths differ");
    // SAFETY: as in `load`, with the roles swapped; shared words may be written through a
    // shared reference (they are atomics).
    unsafe { move_bytes(first_byte(dst), data.as_ptr(), dst.len) }
}

/// Copy the bytes of `src` to `dst` (of the same length).
#[inline]
pub(super) fn copy(src: Words<'_>, dst: Words<'_>) {
    assert_eq!(src.len, dst.len, "copy lengths differ");
    // SAFETY: both are ranges of live shared words valid for `len` bytes; see `load`.
    unsafe { move_bytes(first_byte(dst), first_byte(src), src.len) }
}

/// Copy `src` into `dst` (of the same length) with the copy of shared bytes: what a bounce's
/// copy costs on ordinary memory, for comparison with `memcpy`.
pub(super) fn copy_plain(dst: &mut [u8], src: &[u8]) {
    assert_eq!(src.len(), dst.len(), "copy lengths differ");
    // SAFETY: both slices are valid for their length, and borrowed (the one written
    // exclusively), so no other thread accesses them.
    unsafe { move_bytes(dst.as_mut_ptr(), src.as_ptr(), src.len()) }
}

/// Zero the bytes of `dst`.
pub(super) fn zero(dst: Words<'_>) {
    // SAFETY: `dst` is valid for writes of `len` bytes; `rep stosb` is a sequence of byte
    // stores (module documentation).
    unsafe {
        asm!(
            "rep stosb",
            inout("rcx") dst.len => _,
            inout("rdi") first_byte(dst) => _,
            in("al") 0u8,
            options(nostack, preserves_flags)
        );
    }
}

/// The range's first byte: valid for reads and writes (the words are atomics, so
/// interior-mutable) of `w.len` bytes while the words are borrowed.
#[inline]
fn first_byte(w: Words<'_>) -> *mut u8 {
    // In bounds by `Words`' invariant; no arithmetic beyond the allocation.
    w.words
        .as_ptr()
        .cast::<u8>()
        .cast_mut()
        .wrapping_add(w.start)
}

/// Copy `len` bytes from `src` to `dst`, forwards: 32-byte AVX moves from 32 bytes up where
/// the processor has AVX, else `rep movsb`.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes; any of those bytes that
/// another thread may access at the same time must only be accessed atomically (as bytes, by
/// this module) by everybody.
#[inline]
unsafe fn move_bytes(dst: *mut u8, src: *const u8, len: usize) {
    // `is_x86_feature_detected!` reads a cached word once the first call has asked the CPU.
    if len >= WIDE && std::arch::is_x86_feature_detected!("avx") {
        // SAFETY: the caller's contract; AVX is present and `len >= WIDE`.
        unsafe { move_wide(dst, src, len) }
    } else {
        // SAFETY: the caller's contract.
        unsafe { move_string(dst, src, len) }
    }
}

/// The width of one AVX move; the wide copy needs at least one.
const WIDE: usize = 32;

/// `rep movsb`: copy `len` bytes from `src` to `dst`, forwards.
///
/// # Safety
/// As [`move_bytes`].
#[inline]
unsafe fn move_string(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract; the instruction reads `src..src + len` and writes
    // `dst..dst + len` and touches no other memory, no stack and no flags.
    unsafe {
        asm!(
            "rep movsb",
            inout("rcx") len => _,
            inout("rdi") dst => _,
            inout("rsi") src => _,
            options(nostack, preserves_flags)
        );
    }
}

/// Copy `len >= WIDE` bytes from `src` to `dst` with unaligned 32-byte AVX moves: blocks of
/// four, then single moves, then one move of the last 32 bytes (overlapping bytes already
/// copied, so no byte-wise tail), then `vzeroupper` (no penalty for later SSE code).
///
/// # Safety
/// As [`move_bytes`], and the processor has AVX (and the OS saves its registers).
#[inline]
unsafe fn move_wide(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract. Every access lies inside `src..src + len` or
    // `dst..dst + len`: the loops run while a whole block or move is left, and the last move
    // starts at `len - 32 >= 0`. The vector registers are declared clobbered through the C
    // ABI's caller-saved set (all of them on x86-64), the flags by leaving out
    // `preserves_flags` (with `clobber_abi`, outputs name their registers: caller-saved ones).
    unsafe {
        asm!(
            "lea r8, [rsi + rcx - 32]",
            "lea r9, [rdi + rcx - 32]",
            "cmp rcx, 128",
            "jb 3f",
            "2:",
            "vmovdqu ymm0, ymmword ptr [rsi]",
            "vmovdqu ymm1, ymmword ptr [rsi + 32]",
            "vmovdqu ymm2, ymmword ptr [rsi + 64]",
            "vmovdqu ymm3, ymmword ptr [rsi + 96]",
            "vmovdqu ymmword ptr [rdi], ymm0",
            "vmovdqu ymmword ptr [rdi + 32], ymm1",
            "vmovdqu ymmword ptr [rdi + 64], ymm2",
            "vmovdqu ymmword ptr [rdi + 96], ymm3",
            "add rsi, 128",
            "add rdi, 128",
            "sub rcx, 128",
            "cmp rcx, 128",
            "jae 2b",
            "3:",
            "cmp rcx, 32",
            "jbe 5f",
            "4:",
            "vmovdqu ymm0, ymmword ptr [rsi]",
            "vmovdqu ymmword ptr [rdi], ymm0",
            "add rsi, 32",
            "add rdi, 32",
            "sub rcx, 32",
            "cmp rcx, 32",
            "ja 4b",
            "5:",
            "vmovdqu ymm0, ymmword ptr [r8]",
            "vmovdqu ymmword ptr [r9], ymm0",
            "vzeroupper",
            inout("rsi") src => _,
            inout("rdi") dst => _,
            inout("rcx") len => _,
            out("r8") _,
            out("r9") _,
            clobber_abi("C"),
            options(nostack)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A copy of raw bytes, as `move_bytes`.
    type RawCopy = unsafe fn(*mut u8, *const u8, usize);

    /// Both copies, at every length up to a few blocks and every source and destination offset
    /// in a vector, against `copy_from_slice`; the bytes around the destination stay as they
    /// were.
    #[test]
    fn both_copies_move_exactly_the_range() {
        let src: Vec<u8> = (0..700u32).map(|i| (i * 7 + 1) as u8).collect();
        let copies: [(&str, RawCopy); 2] = [("string", move_string), ("chosen", move_bytes)];
        for (name, copy) in copies {
            for len in 0..600 {
                for (s_off, d_off) in [(0, 0), (0, 1), (3, 0), (5, 13), (31, 31), (17, 64)] {
                    let mut dst = vec![0xEEu8; 700];
                    // SAFETY: both ranges lie inside their vectors, which nothing else uses.
                    unsafe { copy(dst.as_mut_ptr().add(d_off), src.as_ptr().add(s_off), len) };
                    let mut want = vec![0xEEu8; 700];
                    want[d_off..d_off + len].copy_from_slice(&src[s_off..s_off + len]);
                    assert_eq!(dst, want, "{name} rcx bytes from {s_off} to {d_off}");
                }
            }
        }
    }

    /// The copy on plain buffers moves exactly the range at lengths around the AVX block
    /// sizes, and refuses buffers of different lengths.
    #[test]
    fn the_plain_copy_moves_exactly_the_range_and_checks_lengths() {
        let src: Vec<u8> = (0..5000u32).map(|i| (i * 11 + 3) as u8).collect();
        for len in [0, 1, 31, 32, 33, 127, 128, 129, 4095, 4096, 4097] {
            let mut dst = vec![0xEEu8; 5000];
            copy_plain(&mut dst[5..5 + len], &src[..len]);
            let mut want = vec![0xEEu8; 5000];
            want[5..5 + len].copy_from_slice(&src[..len]);
            assert_eq!(dst, want, "{len} bytes");
        }
        let refused = std::panic::catch_unwind(|| copy_plain(&mut [0u8; 3], &[1u8; 4]));
        assert!(refused.is_err());
    }

    /// The wide copy itself, where the processor has AVX (the chosen copy uses it from 32
    /// bytes up, so this adds the lengths at the boundaries once more without the choice).
    #[test]
    fn the_wide_copy_moves_exactly_the_range() {
        if !std::arch::is_x86_feature_detected!("avx") {
            return;
        }
        let src: Vec<u8> = (0..1200u32).map(|i| (i * 13 + 5) as u8).collect();
        for len in (WIDE..1100).filter(|l| l % 32 < 2 || l % 32 > 30 || l % 128 == 1) {
            let mut dst = vec![0xEEu8; 1200];
            // SAFETY: as above; AVX is present and `len >= WIDE`.
            unsafe { move_wide(dst.as_mut_ptr().add(7), src.as_ptr().add(3), len) };
            let mut want = vec![0xEEu8; 1200];
            want[7..7 + len].copy_from_slice(&src[3..3 + len]);
            assert_eq!(dst, want, "rcx bytes");
        }
    }
}
