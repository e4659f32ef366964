//! Memory a device may access at any moment: the pools and [`crate::RegionMemory`].
//!
//! A device writes its bounce buffer whenever it likes (a real, untrusted device does not wait
//! for the CPU's sync), so these bytes are never borrowed as `&[u8]`/`&mut [u8]`: a racing
//! device write would make such a borrow undefined behaviour. They are an array of atomic
//! 64-bit words (so the memory is interior-mutable and atomically accessible), and every
//! access is atomic, through one of two sets of copies chosen per build:
//!
//! * `byte_copy` (x86-64, outside Miri and loom): 32-byte AVX moves (where the processor has
//!   AVX; `rep movsb` otherwise and under 32 bytes) and `rep stosb` in inline assembly, i.e.
//!   Relaxed atomic byte accesses in the sense of RFC 3301's atomic per-byte `memcpy`, at
//!   `memcpy` speed or better (word copies cannot be vectorised);
//! * `word_copy` everywhere else: Relaxed atomic accesses of one aligned 64-bit word each.
//!
//! A race then yields unspecified bytes, never undefined behaviour. Only one set is used in a
//! build, so racing accesses always have one size: racing atomic accesses of different sizes
//! are undefined (Miri reports them).
//!
//! [`DmaSrc`] and [`DmaDst`] hand such bytes, or a caller's own buffer, to an
//! [`crate::OrigMemory`] implementation, which copies through them piece by piece and never
//! holds a reference to device-reachable bytes.
//!
//! Pieces handed to [`crate::OrigMemory`] are at most 4 KiB (a stack buffer for bounce
//! memory, zeroed only as far as the copy reaches; the buffer itself for a caller's plain
//! buffer).
//!
//! Measured (dmabench, CPU time, 2-vCPU AMD EPYC): a 4 KiB bounce to the device (map, copy,
//! unmap) took 164 ns with the word copies and 103 ns with the byte copies, against 43 ns for
//! an aligned 4 KiB `memcpy`; from the device (two copies), 277 ns and 153 ns. The copy itself
//! is not what is left: alone, a page-aligned 4 KiB `rep movsb` costs what glibc's `memcpy`
//! does (18.8 against 19.3 ns on a 2-vCPU Intel Xeon with ERMS and FSRM, and within 1 ns of it
//! at every other source and destination offset tried), and a bounce makes it as one
//! instruction, neither split nor preceded by a direction-flag change. On a 2-vCPU AMD EPYC
//! the AVX moves that replaced it there copy 4 KiB in 34.6 ns against 40.9 for `rep movsb` and
//! 45 for `memcpy` (and in 49 ns into a misaligned destination, where the string copy takes
//! over a microsecond: `byte_copy` has the figures); the 4 KiB bounce went from 1.55× to
//! about 1.27× glibc's aligned `memcpy` with them. Since a copy faster than `memcpy` made
//! that ratio flatter the allocator, dmabench's floor is the faster of `memcpy` and this
//! copy on plain buffers ([`copy_bytes`]). What is left above the copy is the allocator's
//! bookkeeping: about 403 instructions per map+unmap outside the copy's 437, counted with
//! callgrind (`examples/bounce_loop.rs`; 420 before the fast paths kept their values in
//! registers and `map`/`unmap` became inlined wrappers that pass their attributes in
//! registers, 465 while the copy of a [`crate::RegionMemory`] went through a trait object, 550
//! before the fast paths of map and unmap), and one locked instruction (the unmap's claim; the
//! map takes its thread's cached run without one). The copy is bound by the store port (one
//! 32-byte store a cycle), so the bookkeeping's own stores, spills, pushes and metadata
//! writes, queue behind its 129 in the store buffer: 171 stores a loop iteration in all
//! (197 before those two changes; the loop's own calls included), counted from callgrind's
//! per-instruction counts. Each access checks its range once: a copy between a pool and a
//! [`crate::RegionMemory`] checks the bounce range and the original range, one check each.

use dma_sync::atomic::untracked::AtomicU64;
use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::mem::MaybeUninit;
use std::ptr::NonNull;

#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
mod byte_copy;
#[cfg_attr(
    all(target_arch = "x86_64", not(miri), not(loom), not(test)),
    allow(dead_code)
)]
mod word_copy;

/// The copies every access to shared bytes goes through: one kind per build, so racing
/// accesses always have one size (see `byte_copy`).
#[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
use byte_copy as copies;
#[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
use word_copy as copies;

/// Copy `src` into `dst` (of the same length) as the copies of bounce memory do: on x86-64
/// the 32-byte AVX moves (`rep movsb` without AVX or under 32 bytes) every pool access goes
/// through; elsewhere, where pools are copied word by word and only word-aligned atomic
/// memory can be, `copy_from_slice`. For benchmarks: the copy a bounce makes, without the
/// allocator, set against `memcpy`. Panics if the lengths differ.
///
/// ```
/// let src = [7u8; 100];
/// let mut dst = [0u8; 100];
/// swiotlb_core::copy_bytes(&mut dst, &src);
/// assert_eq!(dst, src);
/// ```
pub fn copy_bytes(dst: &mut [u8], src: &[u8]) {
    #[cfg(all(target_arch = "x86_64", not(miri), not(loom)))]
    byte_copy::copy_plain(dst, src);
    #[cfg(not(all(target_arch = "x86_64", not(miri), not(loom))))]
    dst.copy_from_slice(src);
}

const WORD: usize = 8;

/// Largest piece `DmaSrc::for_each_chunk` and [`DmaDst::fill_chunks`] hand out at once.
pub(crate) const CHUNK: usize = 4096;

/// Bytes `start..start + len` of an array of shared words; `start + len` never exceeds the
/// words' bytes (checked where a range is made), which the copies rely on.
#[derive(Clone, Copy)]
struct Words<'a> {
    words: &'a [AtomicU64],
    start: usize,
    len: usize,
}

impl<'a> Words<'a> {
    /// The sub-range `off..off + len`; panics if it leaves `self`.
    fn sub(self, off: usize, len: usize) -> Words<'a> {
        let inside = off.checked_add(len).is_some_and(|end| end <= self.len);
        assert!(inside, "shared sub-range out of bounds");
        Words {
            words: self.words,
            start: self.start + off,
            len,
        }
    }

    /// Copy the bytes into `out` (of length `self.len`).
    fn load(self, out: &mut [u8]) {
        copies::load(self, out);
    }

    /// Copy the bytes into `out` (of length `self.len`, not necessarily initialised) and
    /// return it initialised: no zeroing before a copy that overwrites every byte.
    fn load_uninit(self, out: &mut [MaybeUninit<u8>]) -> &mut [u8] {
        copies::load_uninit(self, out)
    }

    /// Copy `data` (of length `self.len`) into the bytes.
    fn store(self, data: &[u8]) {
        copies::store(self, data);
    }

    /// Copy the bytes to `dst` (of the same length).
    #[inline]
    fn copy_to(self, dst: Words<'_>) {
        copies::copy(self, dst);
    }

    /// Zero the bytes.
    fn zero(self) {
        copies::zero(self);
    }
}

/// `(offset, length)` of the consecutive pieces of at most [`CHUNK`] bytes covering `len`.
fn pieces(len: usize) -> impl Iterator<Item = (usize, usize)> {
    (0..len)
        .step_by(CHUNK)
        .map(move |off| (off, CHUNK.min(len - off)))
}

/// A stack buffer for pieces of a copy of `len` bytes: zeroed only as far as the first piece
/// reaches (a small copy does not pay for zeroing 4 KiB).
fn piece_buffer(storage: &mut [MaybeUninit<u8>; CHUNK], len: usize) -> &mut [u8] {
    zeroed(&mut storage[..len.min(CHUNK)])
}

/// `out`, zeroed.
fn zeroed(out: &mut [MaybeUninit<u8>]) -> &mut [u8] {
    out.fill(MaybeUninit::new(0));
    // SAFETY: every byte was just initialised; the slice borrows `out`.
    unsafe { std::slice::from_raw_parts_mut(out.as_mut_ptr().cast::<u8>(), out.len()) }
}

/// Bytes to copy from: device-reachable memory (read with atomic loads only) or the caller's
/// own buffer. The argument of [`crate::OrigMemory::write_from`].
///
/// ```
/// use swiotlb_core::DmaSrc;
/// let src = DmaSrc::from(&b"hello"[..]);
/// let mut got = Vec::new();
/// src.for_each_chunk(|off, bytes| {
///     assert_eq!(off, got.len());
///     got.extend_from_slice(bytes);
///     Ok::<(), ()>(())
/// })
/// .unwrap();
/// assert_eq!((src.len(), &got[..]), (5, &b"hello"[..]));
/// ```
#[derive(Clone, Copy)]
pub struct DmaSrc<'a>(Src<'a>);

#[derive(Clone, Copy)]
enum Src<'a> {
    Shared(Words<'a>),
    Plain(&'a [u8]),
}

/// Bytes to copy into: device-reachable memory (written with atomic stores only) or the
/// caller's own buffer. The argument of [`crate::OrigMemory::read_into`].
///
/// ```
/// use swiotlb_core::DmaDst;
/// let mut buf = [0u8; 6];
/// let mut dst = DmaDst::from(&mut buf[..]);
/// dst.fill_chunks(|off, piece| {
///     for (i, b) in piece.iter_mut().enumerate() {
///         *b = (off + i) as u8;
///     }
///     Ok::<(), ()>(())
/// })
/// .unwrap();
/// assert_eq!(buf, [0, 1, 2, 3, 4, 5]);
/// ```
pub struct DmaDst<'a>(Dst<'a>);

enum Dst<'a> {
    Shared(Words<'a>),
    Plain(&'a mut [u8]),
}

impl std::fmt::Debug for DmaSrc<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaSrc").field("len", &self.len()).finish()
    }
}

impl std::fmt::Debug for DmaDst<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaDst").field("len", &self.len()).finish()
    }
}

impl<'a> From<&'a [u8]> for DmaSrc<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        DmaSrc(Src::Plain(bytes))
    }
}

impl<'a> From<&'a mut [u8]> for DmaDst<'a> {
    fn from(bytes: &'a mut [u8]) -> Self {
        DmaDst(Dst::Plain(bytes))
    }
}

impl DmaSrc<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match self.0 {
            Src::Shared(w) => w.len,
            Src::Plain(b) => b.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Hand the bytes to `f` in order, as `(offset, bytes)` pieces: a caller's buffer in one
    /// piece, device-reachable memory copied out through a stack buffer of up to 4 KiB
    /// bytes at a time. Stops at the first error and returns it.
    pub fn for_each_chunk<E>(
        &self,
        mut f: impl FnMut(usize, &[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match self.0 {
            Src::Plain(b) => f(0, b),
            Src::Shared(w) => {
                let mut storage = [MaybeUninit::uninit(); CHUNK];
                for (off, n) in pieces(w.len) {
                    f(off, w.sub(off, n).load_uninit(&mut storage[..n]))?;
                }
                Ok(())
            }
        }
    }

    /// Copy into `dst` (of the same length, checked by the caller).
    // Inlined into each `OrigMemory` copy, where the source's kind is known and three of the
    // four arms fold away (a map's 4 KiB copy paid a call and a two-way match).
    #[inline(always)]
    pub(crate) fn copy_to(self, dst: DmaDst<'_>) {
        match (self.0, dst.0) {
            (Src::Plain(s), Dst::Plain(d)) => d.copy_from_slice(s),
            (Src::Shared(s), Dst::Plain(d)) => s.load(d),
            (Src::Plain(s), Dst::Shared(d)) => d.store(s),
            (Src::Shared(s), Dst::Shared(d)) => s.copy_to(d),
        }
    }
}

impl DmaDst<'_> {
    /// Length in bytes.
    pub fn len(&self) -> usize {
        match &self.0 {
            Dst::Shared(w) => w.len,
            Dst::Plain(b) => b.len(),
        }
    }

    /// Whether there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Have `f` fill the bytes in order, as `(offset, piece)` pieces: a caller's buffer in
    /// one piece, device-reachable memory through a stack buffer of up to 4 KiB bytes,
    /// stored once `f` returns `Ok`. Stops at the first error and returns it (the pieces
    /// before it are stored).
    pub fn fill_chunks<E>(
        &mut self,
        mut f: impl FnMut(usize, &mut [u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        match &mut self.0 {
            Dst::Plain(b) => f(0, b),
            Dst::Shared(w) => {
                let mut storage = [MaybeUninit::uninit(); CHUNK];
                let buf = piece_buffer(&mut storage, w.len);
                for (off, n) in pieces(w.len) {
                    f(off, &mut buf[..n])?;
                    w.sub(off, n).store(&buf[..n]);
                }
                Ok(())
            }
        }
    }
}

/// An owned, aligned, zeroed allocation of shared words, addressed by its exposed process
/// address: the memory of a pool or of a [`crate::RegionMemory`].
#[derive(Debug)]
pub(crate) struct SharedRegion {
    ptr: NonNull<AtomicU64>,
    len: usize,
    layout: Layout,
}

// SAFETY: the region owns its words, which are atomics: any thread may access them.
unsafe impl Send for SharedRegion {}
// SAFETY: as above.
unsafe impl Sync for SharedRegion {}

impl SharedRegion {
    /// A zeroed allocation of `len` bytes (at least one word) aligned to `align` (at least a
    /// word), or `None` if the allocator fails.
    pub(crate) fn new(len: usize, align: usize) -> Option<Self> {
        let size = len.max(1).checked_next_multiple_of(WORD)?;
        let layout = Layout::from_size_align(size, align.max(WORD)).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(layout) })?.cast();
        Some(SharedRegion { ptr, len, layout })
    }

    /// The words of the region.
    #[inline]
    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `layout.size() / WORD` zero-initialised (valid) atomics, aligned, alive while
        // `self` is; atomics are only ever accessed through shared references.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.layout.size() / WORD) }
    }

    /// The address devices and [`crate::ProcessMemory`] use for the first byte.
    #[inline]
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as usize as u64
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Offset of `addr..addr+len` inside the region, if it lies wholly inside.
    pub(crate) fn offset_of(&self, addr: u64, len: usize) -> Option<usize> {
        let off = addr.checked_sub(self.addr())?;
        let end = off.checked_add(len as u64)?;
        (end <= self.len as u64).then_some(off as usize)
    }

    /// Bytes `off..off + len`, which the caller has checked lie inside the region (the words
    /// hold at least `self.len` bytes): each access checks its range once.
    #[inline]
    fn words_at(&self, off: usize, len: usize) -> Words<'_> {
        Words {
            words: self.words(),
            start: off,
            len,
        }
    }

    /// Bytes `off..off + len`; panics if they leave the region (callers check first).
    #[inline]
    fn range(&self, off: usize, len: usize) -> Words<'_> {
        let inside = off.checked_add(len).is_some_and(|end| end <= self.len);
        assert!(inside, "shared region range out of bounds");
        self.words_at(off, len)
    }

    /// Bytes `addr..addr + len` by address, if they lie wholly inside the region.
    #[inline]
    fn range_at(&self, addr: u64, len: usize) -> Option<Words<'_>> {
        let off = self.offset_of(addr, len)?;
        Some(self.words_at(off, len))
    }

    /// Copy bytes `off..off + buf.len()` into `buf`.
    pub(crate) fn read(&self, off: usize, buf: &mut [u8]) {
        self.range(off, buf.len()).load(buf);
    }

    /// Copy `data` to bytes `off..off + data.len()`.
    pub(crate) fn write(&self, off: usize, data: &[u8]) {
        self.range(off, data.len()).store(data);
    }

    /// Zero bytes `off..off + len`.
    pub(crate) fn zero(&self, off: usize, len: usize) {
        self.range(off, len).zero();
    }

    /// Bytes `off..off + len` to copy from.
    #[inline]
    pub(crate) fn src(&self, off: usize, len: usize) -> DmaSrc<'_> {
        DmaSrc(Src::Shared(self.range(off, len)))
    }

    /// Bytes `off..off + len` to copy into.
    #[inline]
    pub(crate) fn dst(&self, off: usize, len: usize) -> DmaDst<'_> {
        DmaDst(Dst::Shared(self.range(off, len)))
    }

    /// Bytes `addr..addr + len` by address to copy from, if they lie inside the region.
    #[inline]
    pub(crate) fn src_at(&self, addr: u64, len: usize) -> Option<DmaSrc<'_>> {
        Some(DmaSrc(Src::Shared(self.range_at(addr, len)?)))
    }

    /// Bytes `addr..addr + len` by address to copy into, if they lie inside the region.
    #[inline]
    pub(crate) fn dst_at(&self, addr: u64, len: usize) -> Option<DmaDst<'_>> {
        Some(DmaDst(Dst::Shared(self.range_at(addr, len)?)))
    }
}

impl Drop for SharedRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { dealloc(self.ptr.as_ptr().cast(), self.layout) };
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    /// One set of copies, called directly (the build's own set is also reached through
    /// `SharedRegion`, `DmaSrc` and `DmaDst` by the other tests).
    struct Copies {
        load: fn(Words<'_>, &mut [u8]),
        load_uninit: for<'o> fn(Words<'_>, &'o mut [MaybeUninit<u8>]) -> &'o mut [u8],
        store: fn(Words<'_>, &[u8]),
        copy: fn(Words<'_>, Words<'_>),
        zero: fn(Words<'_>),
    }

    const WORD_COPIES: Copies = Copies {
        load: word_copy::load,
        load_uninit: word_copy::load_uninit,
        store: word_copy::store,
        copy: word_copy::copy,
        zero: word_copy::zero,
    };

    #[cfg(all(target_arch = "x86_64", not(miri)))]
    const BYTE_COPIES: Copies = Copies {
        load: byte_copy::load,
        load_uninit: byte_copy::load_uninit,
        store: byte_copy::store,
        copy: byte_copy::copy,
        zero: byte_copy::zero,
    };

    /// Writes, zeroing and copies of `(offset, length)` ranges in a region of `size` bytes,
    /// each followed by a read of the whole region (and of the copy's target) compared with
    /// a plain byte array that had the same done to it.
    fn check_against_bytes(c: &Copies, size: usize, ranges: impl Iterator<Item = (usize, usize)>) {
        let r = SharedRegion::new(size, 64).unwrap();
        let other = SharedRegion::new(size, 64).unwrap();
        let (mut model, mut other_model) = (vec![0u8; size], vec![0u8; size]);
        let mut seed = 1u8;
        for (off, len) in ranges {
            seed = seed.wrapping_mul(31).wrapping_add(7);
            let data: Vec<u8> = (0..len).map(|i| i as u8 ^ seed).collect();
            (c.store)(r.range(off, len), &data);
            model[off..off + len].copy_from_slice(&data);
            let mut back = vec![0u8; size];
            (c.load)(r.range(0, size), &mut back);
            assert_eq!(back, model, "write {off}+{len}");
            let mut storage = vec![MaybeUninit::uninit(); len];
            let piece = (c.load_uninit)(r.range(off, len), &mut storage);
            assert_eq!(piece, &model[off..off + len], "read {off}+{len}");
            if len % 3 == 0 {
                (c.zero)(r.range(off, len));
                model[off..off + len].fill(0);
            }
            // Same and different offsets in a word, forwards and backwards.
            let to = (off * 5 + len) % (size - len + 1);
            (c.copy)(r.range(off, len), other.range(to, len));
            other_model[to..to + len].copy_from_slice(&model[off..off + len]);
            (c.load)(other.range(0, size), &mut back);
            assert_eq!(back, other_model, "copy {off}+{len} to {to}");
        }
    }

    /// Every (offset, length) in the first words.
    fn small_ranges() -> impl Iterator<Item = (usize, usize)> {
        let n = if cfg!(miri) { 12 } else { 40 };
        (0..n).flat_map(move |off| (0..n - off).map(move |len| (off, len)))
    }

    /// Odd offsets and lengths up to a few pages, around every word and page position.
    fn large_ranges(size: usize) -> impl Iterator<Item = (usize, usize)> {
        let mut x = 0x9e37_79b9_u64;
        (0..if cfg!(miri) { 8 } else { 300 }).map(move |_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let off = (x % size as u64) as usize;
            let len = ((x >> 32) % (size - off + 1) as u64) as usize;
            (off, len)
        })
    }

    #[test]
    fn word_copies_match_a_byte_array() {
        check_against_bytes(&WORD_COPIES, 64, small_ranges());
        let size = if cfg!(miri) { 600 } else { 3 * CHUNK + 77 };
        check_against_bytes(&WORD_COPIES, size, large_ranges(size));
    }

    #[cfg(all(target_arch = "x86_64", not(miri)))]
    #[test]
    fn byte_copies_match_a_byte_array() {
        check_against_bytes(&BYTE_COPIES, 64, small_ranges());
        check_against_bytes(&BYTE_COPIES, 3 * CHUNK + 77, large_ranges(3 * CHUNK + 77));
    }

    /// The build's copies through the region's own entry points.
    #[test]
    fn region_reads_writes_and_copies_match_a_byte_array() {
        let r = SharedRegion::new(64, 64).unwrap();
        let other = SharedRegion::new(64, 64).unwrap();
        let mut model = [0u8; 64];
        for (off, len) in small_ranges() {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + off) as u8).collect();
            r.write(off, &data);
            model[off..off + len].copy_from_slice(&data);
            let mut back = vec![0u8; 64];
            r.read(0, &mut back);
            assert_eq!(back, model, "write {off}+{len}");
            if len % 3 == 0 {
                r.zero(off, len);
                model[off..off + len].fill(0);
            }
            let to = (off * 5 + len) % (64 - len);
            r.src(off, len).copy_to(other.dst(to, len));
            let mut got = vec![0u8; len];
            other.read(to, &mut got);
            assert_eq!(got, model[off..off + len], "copy {off}+{len} to {to}");
        }
    }

    #[test]
    #[should_panic(expected = "out of bounds")]
    fn sub_ranges_never_leave_their_range() {
        let r = SharedRegion::new(64, 64).unwrap();
        r.range(8, 16).sub(10, 7);
    }

    #[test]
    fn chunks_cover_large_ranges_in_order() {
        let len = CHUNK + 100;
        let r = SharedRegion::new(len + 3, 8).unwrap();
        let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        r.write(3, &data);
        let mut got = Vec::new();
        r.src(3, len)
            .for_each_chunk(|off, b| {
                assert_eq!(off, got.len());
                got.extend_from_slice(b);
                Ok::<(), ()>(())
            })
            .unwrap();
        assert_eq!(got, data);
        let mut dst = r.dst(3, len);
        dst.fill_chunks(|off, b| {
            b.iter_mut().for_each(|x| *x = (off / CHUNK) as u8 + 1);
            Ok::<(), ()>(())
        })
        .unwrap();
        let mut back = vec![0u8; len];
        r.read(3, &mut back);
        assert!(back[..CHUNK].iter().all(|&b| b == 1) && back[CHUNK..].iter().all(|&b| b == 2));
        // A failing piece stops the copy: nothing of it is stored.
        let stop = r.dst(3, len).fill_chunks(|off, b| {
            b.fill(9);
            if off > 0 {
                Err(off)
            } else {
                Ok(())
            }
        });
        assert_eq!(stop, Err(CHUNK));
        r.read(3, &mut back);
        assert!(back[..CHUNK].iter().all(|&b| b == 9) && back[CHUNK..].iter().all(|&b| b == 2));
    }

    /// The piece buffer is zeroed as far as a copy reaches: bytes a filler leaves alone are
    /// stored as zeros (never an earlier copy's bytes), for small and for large copies.
    #[test]
    fn pieces_a_filler_leaves_alone_are_stored_as_zeros() {
        let r = SharedRegion::new(CHUNK + 64, 8).unwrap();
        for len in [1, 5, 64, CHUNK + 11] {
            r.write(3, &vec![0xAB; len]);
            let mut seen = Vec::new();
            r.dst(3, len)
                .fill_chunks(|_, piece| {
                    seen.extend_from_slice(piece);
                    Ok::<(), ()>(())
                })
                .unwrap();
            assert_eq!(seen, vec![0; len], "handed out {len}");
            let mut back = vec![1u8; len];
            r.read(3, &mut back);
            assert_eq!(back, vec![0; len], "stored {len}");
        }
    }

    #[test]
    fn out_of_range_offsets_are_refused() {
        let r = SharedRegion::new(100, 8).unwrap();
        assert_eq!(r.offset_of(r.addr() + 90, 10), Some(90));
        assert_eq!(r.offset_of(r.addr() + 91, 10), None);
        assert_eq!(r.offset_of(r.addr() - 1, 1), None);
        assert_eq!(r.offset_of(u64::MAX, 2), None);
    }
}
