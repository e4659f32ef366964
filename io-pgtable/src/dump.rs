//! The debug walk's output: descriptors as the hardware would see them.

use crate::pte::Descriptor;
use std::fmt;

/// One valid descriptor met by a walk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct WalkEntry {
    /// The level of the table holding the descriptor.
    pub level: u32,
    /// Its index in that table.
    pub index: usize,
    /// The first input address it maps.
    pub iova: u64,
    /// Bytes of input addresses it covers (the block size of its level).
    pub size: u64,
    /// The address of the table holding it.
    pub table: u64,
    /// The raw 64-bit descriptor.
    pub raw: u64,
    /// The decoded descriptor.
    pub desc: Descriptor,
}

/// Every valid descriptor reachable from the root, in walk order.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Dump {
    /// The root table's address.
    pub root: u64,
    /// Tables reached, the root included.
    pub tables: usize,
    /// The descriptors, depth first.
    pub entries: Vec<WalkEntry>,
}

impl Dump {
    /// The leaf descriptors: one per page or block.
    pub fn leaves(&self) -> impl Iterator<Item = &WalkEntry> {
        self.entries
            .iter()
            .filter(|e| matches!(e.desc, Descriptor::Leaf { .. }))
    }

    /// Bytes mapped by the leaves.
    pub fn mapped_bytes(&self) -> u64 {
        self.leaves().map(|e| e.size).sum()
    }
}

impl fmt::Display for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "root @ {:#x}: {} tables, {:#x} bytes mapped",
            self.root,
            self.tables,
            self.mapped_bytes()
        )?;
        let top = self.entries.first().map_or(0, |e| e.level);
        for e in &self.entries {
            let indent = 2 * (e.level - top) as usize + 2;
            write!(
                f,
                "{:indent$}L{} [{:4}] iova {:#014x}: {:#018x} ",
                "", e.level, e.index, e.iova, e.raw
            )?;
            match e.desc {
                Descriptor::Table { addr } => writeln!(f, "table @ {addr:#x}")?,
                Descriptor::Leaf { paddr, prot } => {
                    let kind = if e.level == 3 { "page" } else { "block" };
                    writeln!(f, "{kind} -> {paddr:#x} {prot} ({:#x})", e.size)?
                }
                Descriptor::Invalid => writeln!(f, "invalid")?,
            }
        }
        Ok(())
    }
}
