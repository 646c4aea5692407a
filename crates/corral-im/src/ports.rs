//! Allocation of TCP ports from the instance manager's configured range.
use std::collections::BTreeSet;
use std::ops::RangeInclusive;

/// Hands out ports from a range, never the same port twice while it is held. The cursor moves
/// on, so a port just released is reused last: a client still holding a connection to the old
/// process does not reach a new one by accident.
pub struct PortAllocator {
    range: RangeInclusive<u16>,
    used: BTreeSet<u16>,
    cursor: u16,
    bindable: fn(u16) -> bool,
}

/// Whether a port can be bound on the loopback address right now.
fn bindable_on_loopback(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

impl PortAllocator {
    pub fn new(range: RangeInclusive<u16>) -> Self {
        Self::with_probe(range, bindable_on_loopback)
    }

    /// An allocator that asks `bindable` whether a port is free on the machine (tests use a
    /// probe that does not depend on what other processes hold).
    pub fn with_probe(range: RangeInclusive<u16>, bindable: fn(u16) -> bool) -> Self {
        let cursor = *range.start();
        PortAllocator { range, used: BTreeSet::new(), cursor, bindable }
    }

    pub fn range(&self) -> &RangeInclusive<u16> {
        &self.range
    }

    /// Ports held now.
    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// `count` free ports, each checked bindable on the loopback address right now (another
    /// program on the machine may hold a port of our range). `None` if the range has no room.
    pub fn allocate(&mut self, count: usize) -> Option<Vec<u16>> {
        let size = usize::from(self.range.end() - self.range.start()) + 1;
        let mut out = Vec::with_capacity(count);
        let mut tried = 0;
        while out.len() < count && tried < size {
            let port = self.cursor;
            self.cursor = if port >= *self.range.end() { *self.range.start() } else { port + 1 };
            tried += 1;
            if self.used.contains(&port) || out.contains(&port) {
                continue;
            }
            if !(self.bindable)(port) {
                continue;
            }
            out.push(port);
        }
        if out.len() < count {
            return None;
        }
        self.used.extend(&out);
        Some(out)
    }

    /// Exactly these ports, if all are in the range, not held, and bindable now.
    pub fn allocate_exact(&mut self, ports: &[u16]) -> Option<Vec<u16>> {
        let mut seen = BTreeSet::new();
        for p in ports {
            if !self.range.contains(p) || self.used.contains(p) || !seen.insert(*p) {
                return None;
            }
            if !(self.bindable)(*p) {
                return None;
            }
        }
        self.used.extend(ports);
        Some(ports.to_vec())
    }

    /// Return ports to the pool.
    pub fn release(&mut self, ports: &[u16]) {
        for p in ports {
            self.used.remove(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The allocator's own bookkeeping, independent of what other processes on the machine
    /// hold (the fixed ranges below lie in the kernel's ephemeral range, where a concurrent
    /// test's outgoing connection may own a port at any moment).
    fn every_port_is_free(_: u16) -> bool {
        true
    }

    #[test]
    fn allocates_distinct_ports_and_reuses_released_ones_last() {
        let mut a = PortAllocator::with_probe(41000..=41009, every_port_is_free);
        let first = a.allocate(4).unwrap();
        assert_eq!(first.len(), 4);
        let second = a.allocate(6).unwrap();
        assert!(first.iter().all(|p| !second.contains(p)));
        assert_eq!(a.allocate(1), None, "range is full");
        a.release(&first[..2]);
        assert_eq!(a.in_use(), 8);
        let third = a.allocate(2).unwrap();
        let mut expect = first[..2].to_vec();
        expect.sort_unstable();
        let mut got = third.clone();
        got.sort_unstable();
        assert_eq!(got, expect);
    }

    #[test]
    fn exact_ports_only_when_free_and_in_range() {
        let mut a = PortAllocator::with_probe(41100..=41109, every_port_is_free);
        assert_eq!(a.allocate_exact(&[41105, 41101]), Some(vec![41105, 41101]));
        assert_eq!(a.allocate_exact(&[41105]), None, "held");
        assert_eq!(a.allocate_exact(&[41200]), None, "outside the range");
        assert_eq!(a.allocate_exact(&[41102, 41102]), None, "twice");
        a.release(&[41105]);
        assert_eq!(a.allocate_exact(&[41105]), Some(vec![41105]));
    }

    #[test]
    fn skips_ports_held_by_someone_else() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let mut a = PortAllocator::new(port..=port);
        assert_eq!(a.allocate(1), None);
        drop(held);
        assert_eq!(a.allocate(1), Some(vec![port]));
    }
}
