//! A FIFO queue whose first element lives inline, in the structure that holds the queue.
//!
//! Owns: the oldest element (inline) and the others (a boxed `VecDeque`, allocated on first
//! overflow and kept: one word inline, so a flow entry's hot lines hold both guests' oldest
//! datagrams, see `shard::Slot`). A datagram flow whose guests agree holds one datagram at a
//! time on one side, waiting for its copy: kept inline it sits in the flow's table entry,
//! which the lookup has just read, instead of in a heap buffer whose address is only known
//! once the entry arrived (one dependent cache miss a frame fewer when flows are many).
//!
//! Must never: lose or reorder an element — it behaves as a `VecDeque` for every operation it
//! has (a property test holds the two to the same results).

use std::collections::VecDeque;

/// A FIFO with its first element inline. Invariant: `rest` is empty whenever `head` is. In
/// field order: the head first, where a flow entry's hot lines are.
#[repr(C)]
pub(crate) struct Fifo<T> {
    head: Option<T>,
    // Boxed on purpose: one word inline instead of four.
    #[allow(clippy::box_collection)]
    rest: Option<Box<VecDeque<T>>>,
}

impl<T> Default for Fifo<T> {
    fn default() -> Self {
        Fifo { head: None, rest: None }
    }
}

impl<T> Fifo<T> {
    pub(crate) fn len(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.as_ref().map_or(0, |r| r.len())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.head.as_ref()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&T> {
        match i {
            0 => self.head.as_ref(),
            _ => self.rest.as_ref()?.get(i - 1),
        }
    }

    pub(crate) fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        match i {
            0 => self.head.as_mut(),
            _ => self.rest.as_mut()?.get_mut(i - 1),
        }
    }

    #[inline]
    pub(crate) fn push_back(&mut self, x: T) {
        if self.head.is_none() {
            self.head = Some(x);
        } else {
            self.push_rest(x);
        }
    }

    /// The rare push behind the head, out of line so `push_back` stays small enough to inline.
    #[inline(never)]
    fn push_rest(&mut self, x: T) {
        self.rest.get_or_insert_with(Box::default).push_back(x);
    }

    #[inline]
    pub(crate) fn pop_front(&mut self) -> Option<T> {
        // The usual case, one element: it moves out once, with no stop on the stack (a
        // staged copy there was read back wider than it was written, stalling the load).
        match self.rest.as_mut().and_then(|r| r.pop_front()) {
            None => self.head.take(),
            next => std::mem::replace(&mut self.head, next),
        }
    }

    /// Removes and returns element `i`, keeping the others in order.
    #[inline]
    pub(crate) fn remove(&mut self, i: usize) -> Option<T> {
        match i {
            0 => self.pop_front(),
            _ => self.rest.as_mut()?.remove(i - 1),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &T> {
        self.head.iter().chain(self.rest.iter().flat_map(|r| r.iter()))
    }
}

impl<T> IntoIterator for Fifo<T> {
    type Item = T;
    type IntoIter = std::iter::Chain<std::option::IntoIter<T>, std::iter::Flatten<std::option::IntoIter<VecDeque<T>>>>;

    fn into_iter(self) -> Self::IntoIter {
        self.head.into_iter().chain(self.rest.map(|r| *r).into_iter().flatten())
    }
}

#[cfg(test)]
impl<T> Fifo<T> {
    /// Where the inline head lies (for the flow entry's layout test).
    pub(crate) fn head_addr(&self) -> usize {
        &self.head as *const Option<T> as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Push(u16),
        Pop,
        Remove(usize),
        Bump(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => any::<u16>().prop_map(Op::Push),
            2 => Just(Op::Pop),
            1 => (0usize..6).prop_map(Op::Remove),
            1 => (0usize..6).prop_map(Op::Bump),
        ]
    }

    proptest! {
        /// Any sequence of operations gives what a `VecDeque` gives, step by step.
        #[test]
        fn prop_behaves_as_a_vecdeque(ops in proptest::collection::vec(op(), 0..64)) {
            let mut fifo = Fifo::default();
            let mut model = VecDeque::new();
            for op in ops {
                match op {
                    Op::Push(x) => {
                        fifo.push_back(x);
                        model.push_back(x);
                    }
                    Op::Pop => prop_assert_eq!(fifo.pop_front(), model.pop_front()),
                    Op::Remove(i) => prop_assert_eq!(fifo.remove(i), model.remove(i)),
                    Op::Bump(i) => {
                        if let (Some(a), Some(b)) = (fifo.get_mut(i), model.get_mut(i)) {
                            *a = a.wrapping_add(1);
                            *b = b.wrapping_add(1);
                        }
                    }
                }
                prop_assert_eq!(fifo.len(), model.len());
                prop_assert_eq!(fifo.is_empty(), model.is_empty());
                prop_assert_eq!(fifo.front(), model.front());
                for i in 0..model.len() + 1 {
                    prop_assert_eq!(fifo.get(i), model.get(i));
                }
                prop_assert!(fifo.iter().eq(model.iter()));
            }
            prop_assert!(fifo.into_iter().eq(model));
        }
    }
}
