//! The bounce-buffer cases: map+copy+unmap in both directions, pool growth under pressure, and
//! the per-I/O allocation peer.

use super::floor::memcpy;
use super::human_bytes;
use crate::harness::measure;
use crate::peers::bounce::{fresh_from_device, fresh_to_device};
use crate::suite::{Case, Component, Omitted, Options, Role};

/// Direction of a bounce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// Memory → device: copy in at map.
    ToDevice,
    /// Device → memory: copy out at unmap.
    FromDevice,
}

/// Workload name of a map+copy+unmap of `size` bytes in `dir`.
pub fn bounce(size: usize, dir: Dir) -> String {
    let d = match dir {
        Dir::ToDevice => "to device",
        Dir::FromDevice => "from device",
    };
    format!("bounce {} {d}", human_bytes(size as u64))
}

/// Implementation name of the per-I/O allocation peer.
pub const FRESH: &str = "fresh buffer per I/O";

/// The size the peers run (the targets compare at 4 KiB).
pub const PEER_SIZE: usize = 4096;

/// The bounce cases selected by `opts`: the peers, and ours once wired in.
pub fn cases(opts: &Options) -> (Vec<Case>, Vec<Omitted>) {
    if !opts.has(Component::Swiotlb) {
        return (Vec::new(), Vec::new());
    }
    let c = Component::Swiotlb;
    let mut v = Vec::new();
    for dir in [Dir::ToDevice, Dir::FromDevice] {
        v.push(
            Case::new(c, bounce(PEER_SIZE, dir), FRESH, Role::Peer, move |cfg, t| {
                measure(cfg, t, |_| {
                    let mut data = vec![0x5au8; PEER_SIZE];
                    move || match dir {
                        Dir::ToDevice => fresh_to_device(&data, 0),
                        Dir::FromDevice => fresh_from_device(&mut data, 0),
                    }
                })
            })
            .with_floor(memcpy(PEER_SIZE)),
        );
    }
    (v, Vec::new())
}

/// Implementation name of our pool with a single area (the global lock Linux had before areas).
pub const ONE_AREA: &str = "ours, one area";
