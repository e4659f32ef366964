//! Cache-line padding for per-CPU and per-shard state.

use std::ops::Deref;

/// Keeps its content on its own cache line(s), so neighbouring shards do not share one.
#[repr(align(128))]
#[derive(Debug, Default)]
pub(crate) struct CachePadded<T>(pub(crate) T);

impl<T> Deref for CachePadded<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.0
    }
}
