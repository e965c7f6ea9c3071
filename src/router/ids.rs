//! Context id allocation.
//!
//! The controller (id 0) owns the id space. It hands out single ids for the
//! children it starts itself and blocks of [`BLOCK_SIZE`] ids to any other
//! context that starts children of its own, which then hands out ids from its
//! block and asks for another when it runs out — the same scheme, and the same
//! observable sequence, as Mitogen's `IdAllocator`/`ChildIdAllocator`.

use crate::wire::ContextId;
use crate::wire::control::IdBlock;

/// Ids in one block handed to a non-controller context.
pub const BLOCK_SIZE: u32 = 1000;

/// The controller's allocator.
#[derive(Debug)]
pub struct IdAllocator {
    next: ContextId,
}

impl Default for IdAllocator {
    fn default() -> Self {
        IdAllocator { next: 1 }
    }
}

impl IdAllocator {
    /// One id for a child of the controller.
    pub fn allocate(&mut self) -> Option<ContextId> {
        let id = self.next;
        self.next = self.next.checked_add(1)?;
        Some(id)
    }

    /// A block of ids for another context; `None` once the space is exhausted.
    pub fn allocate_block(&mut self) -> Option<IdBlock> {
        let start = self.next;
        let end = start.checked_add(BLOCK_SIZE)?;
        self.next = end;
        Some(IdBlock { start, end })
    }
}

/// A non-controller context's current block.
#[derive(Debug, Default)]
pub struct BlockAllocator {
    block: Option<IdBlock>,
}

impl BlockAllocator {
    /// The next id of the current block, if any is left.
    pub fn take(&mut self) -> Option<ContextId> {
        let b = self.block.as_mut()?;
        if b.start >= b.end {
            self.block = None;
            return None;
        }
        let id = b.start;
        b.start += 1;
        Some(id)
    }

    /// Installs a fresh block.
    pub fn refill(&mut self, block: IdBlock) {
        self.block = Some(block);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controller_then_block_sequence_matches_mitogen() {
        // Mitogen's id_allocation_test: first child 1, the child's block
        // starts at 2, the controller's next child is 1002.
        let mut a = IdAllocator::default();
        assert_eq!(a.allocate(), Some(1));
        let block = a.allocate_block().expect("block");
        assert_eq!(
            block,
            IdBlock {
                start: 2,
                end: 1002
            }
        );
        let mut b = BlockAllocator::default();
        b.refill(block);
        assert_eq!(b.take(), Some(2));
        assert_eq!(b.take(), Some(3));
        assert_eq!(a.allocate(), Some(1002));
    }

    #[test]
    fn block_runs_out() {
        let mut b = BlockAllocator::default();
        b.refill(IdBlock { start: 5, end: 7 });
        assert_eq!(b.take(), Some(5));
        assert_eq!(b.take(), Some(6));
        assert_eq!(b.take(), None);
    }

    #[test]
    fn exhausted_space_is_none_not_wraparound() {
        let mut a = IdAllocator {
            next: u32::MAX - 10,
        };
        assert_eq!(a.allocate_block(), None);
    }
}
