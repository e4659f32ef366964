//! The x86-64 copies of shared bytes: `rep movsb` and `rep stosb` in inline assembly.
//!
//! The word copies of `word_copy` cannot be vectorised (the compiler may not merge atomic
//! accesses): a 4 KiB word copy took about 2.5 times an aligned `memcpy` (module `shared` has
//! the measurements). `rep movsb` is the copy glibc's `memcpy` itself uses from 2–4 KiB up on
//! processors with fast string operations (ERMS, FSRM for short copies), and runs at its
//! speed; on older processors it is slower, never incorrect.
//!
//! Why this is sound although a device may write the bytes during the copy: the instruction
//! is an ordinary sequence of byte loads and byte stores at the hardware level (each one
//! single-copy atomic, in no particular order among themselves, as any x86 string operation),
//! and the compiler treats the assembly as opaque code of which it knows only the pointers it
//! receives. The copy is therefore exactly an "atomic per-byte memcpy" (RFC 3301): a sequence
//! of Relaxed one-byte atomic loads and stores, which may race with other atomic accesses of
//! the same size without undefined behaviour. No non-atomic Rust access to racing bytes exists
//! and no reference to them is made. On the targets using this module *every* access to
//! shared bytes goes through it (reads, writes, copies, zeroing, device-side and CPU-side), so
//! all racing accesses have one size (a byte); the word copies of `word_copy` are never mixed
//! into the same memory there.
//!
//! Overlapping ranges (only possible between two ranges of one region) are copied forwards
//! byte by byte, as the word copies do: the result is unspecified bytes, never undefined
//! behaviour. The direction flag is clear on entry to every inline assembly block (a rule of
//! Rust's `asm!` on x86), so the string instructions move forwards.

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

/// `rep movsb`: copy `len` bytes from `src` to `dst`, forwards.
///
/// # Safety
/// `src` must be valid for reads and `dst` for writes of `len` bytes; any of those bytes that
/// another thread may access at the same time must only be accessed atomically (as bytes, by
/// this module) by everybody.
#[inline]
unsafe fn move_bytes(dst: *mut u8, src: *const u8, len: usize) {
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
