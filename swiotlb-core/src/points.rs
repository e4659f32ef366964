//! The mutation points of this crate: every ordering that matters, by name.

dma_sync::mutation_points! {}
