//! CPU-bound work over an index range on every core: key generation, key parsing, ECDH and
//! request signing for tens of thousands of nodes.

use std::thread;

/// Worker threads: one per core the process may use.
pub(crate) fn threads() -> usize {
    thread::available_parallelism().map_or(1, usize::from)
}

/// `f(0), f(1), …, f(count - 1)` in order, computed in contiguous chunks on [`threads`]
/// scoped threads; the first error (by index) wins.
pub(crate) fn map<T, E, F>(count: usize, f: F) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
    F: Fn(usize) -> Result<T, E> + Sync,
{
    let workers = threads().min(count);
    if workers <= 1 {
        return (0..count).map(f).collect();
    }
    let chunk = count.div_ceil(workers);
    let f = &f;
    let results: Vec<Result<Vec<T>, E>> = thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|worker| {
                let range = worker * chunk..((worker + 1) * chunk).min(count);
                scope.spawn(move || range.map(f).collect::<Result<Vec<T>, E>>())
            })
            .collect();
        handles
            .into_iter()
            // A worker only panics if `f` does; re-raise it on the caller's thread.
            .map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut out = Vec::with_capacity(count);
    for part in results {
        out.extend(part?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn keeps_order_and_reports_the_first_error() {
        let squares = super::map(1000, |i| Ok::<_, ()>(i * i)).unwrap();
        assert_eq!(squares.len(), 1000);
        assert!(squares.iter().enumerate().all(|(i, s)| *s == i * i));
        let error = super::map(1000, |i| if i % 300 == 299 { Err(i) } else { Ok(i) });
        assert_eq!(error, Err(299));
        assert!(super::map(0, Ok::<_, ()>).unwrap().is_empty());
    }
}
