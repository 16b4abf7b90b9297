//! Free TCP ports on 127.0.0.1, for servers started as children with explicit addresses.
//!
//! A port is found by binding `127.0.0.1:0`, reading the port the kernel chose and closing the
//! socket again, so another process may in principle take it before the server under test binds
//! it. Two measures keep that window harmless in practice:
//!
//! - every port handed out is remembered for the life of the test binary and never handed out
//!   again, so parallel tests (or the processes of one demo) cannot collide;
//! - the caller passes *every* address explicitly. The Flower defaults (SuperLink `9091`–`9093`,
//!   SuperNode ClientAppIo `0.0.0.0:9094`) are fixed, so two SuperNodes on one machine, or two
//!   tests each starting a SuperLink, collide unless each gets its own ports.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::sync::{Mutex, PoisonError};

use crate::child::{io_error, ChildError, Result};

/// Ports already handed out by this process.
///
/// A std mutex held only to check and insert; poisoning is ignored because the set stays valid
/// whatever panicked.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// How many binds one requested port may cost before giving up.
const ATTEMPTS_PER_PORT: usize = 50;

/// One free port on 127.0.0.1.
///
/// # Errors
///
/// [`ChildError::Io`] if binding fails, or if no port unseen by this process turns up.
pub fn free_port() -> Result<u16> {
    let [port] = free_ports::<1>()?;
    Ok(port)
}

/// `N` distinct free ports on 127.0.0.1, e.g. `let [fleet, exec] = free_ports::<2>()?;`.
///
/// # Errors
///
/// As [`free_port`].
pub fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let ports = free_ports_vec(N)?;
    let found = ports.len();
    ports.try_into().map_err(|_| ChildError::Io {
        context: format!("reserving {N} ports"),
        source: std::io::Error::other(format!("got {found} ports")),
    })
}

/// `count` distinct free ports on 127.0.0.1.
///
/// # Errors
///
/// As [`free_port`].
pub fn free_ports_vec(count: usize) -> Result<Vec<u16>> {
    // Keep every listener open until all ports are chosen, so the kernel cannot hand the same
    // port out twice within one call.
    let mut listeners = Vec::with_capacity(count);
    let mut ports = Vec::with_capacity(count);
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(PoisonError::into_inner);
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for _ in 0..count.saturating_mul(ATTEMPTS_PER_PORT) {
        if ports.len() == count {
            break;
        }
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .map_err(io_error("binding 127.0.0.1:0 to find a free port"))?;
        let port = listener
            .local_addr()
            .map_err(io_error("reading the port of a 127.0.0.1:0 listener"))?
            .port();
        if handed_out.insert(port) {
            ports.push(port);
        }
        listeners.push(listener);
    }
    if ports.len() < count {
        return Err(ChildError::Io {
            context: format!("reserving {count} ports"),
            source: std::io::Error::other("the kernel kept returning ports already handed out"),
        });
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_distinct_and_bindable() {
        let first = free_ports::<4>().expect("ports");
        let second = free_ports_vec(4).expect("ports");
        let mut all: Vec<u16> = first.iter().chain(&second).copied().collect();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), 8, "ports handed out twice: {first:?} {second:?}");
        // Whether a port is still free a moment later depends on everything else on the
        // machine, so only what this process controls is asserted.
        assert!(all.iter().all(|&port| port != 0));
    }

    #[test]
    fn single_port() {
        assert_ne!(free_port().expect("port"), 0);
    }
}
