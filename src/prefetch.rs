//! Work done ahead of its consumer, in parallel, handed over in input order: decoding the
//! images of a list while the model embeds the ones before them.
//!
//! Why not one parallel batch at a time: a batch is only as fast as its slowest item, and
//! photo folders mix sizes. One 12-megapixel JPEG takes 50x as long as a 500x375 one, so with
//! 16 cores a batch of 64 waited for its one large photo while the other 15 cores idled
//! (3x fewer images per second on an H100 host than its cores could decode). Here each thread
//! takes the next item as soon as it is free, up to a window ahead of the consumer, so a slow
//! item delays only its own batch's hand-over while the others keep decoding.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use crate::error::Result;

/// Items each worker may run ahead of the consumer beyond two batches: room for a straggler
/// to finish while the other workers go on.
const AHEAD_PER_WORKER: usize = 8;

/// Runs `work` on every item on rayon's number of threads and calls `consume(start, results)`
/// with consecutive batches of up to `batch` results in input order (`start`: the index of the
/// batch's first item). At most two batches plus a few items per worker are held ahead of the
/// consumer, so memory stays bounded whatever the list's length. An error from `consume` stops
/// the workers (items under way finish, no new ones start) and is returned.
pub fn map_in_order<T, R, W, C>(items: &[T], batch: usize, work: W, mut consume: C) -> Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    C: FnMut(usize, Vec<R>) -> Result<()>,
{
    let batch = batch.max(1);
    let workers = rayon::current_num_threads().clamp(1, items.len().max(1));
    let window = Window::new(2 * batch + AHEAD_PER_WORKER * workers);
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        let (send, receive) = mpsc::channel();
        for _ in 0..workers {
            let send = send.clone();
            let (next, window, work) = (&next, &window, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || !window.wait_for(i) {
                    return;
                }
                if send.send((i, work(&items[i]))).is_err() {
                    return;
                }
            });
        }
        drop(send);
        let outcome = deliver(items.len(), batch, &receive, &window, &mut consume);
        window.stop();
        outcome
    })
}

/// Receives results in any order and hands them to `consume` in order, batch by batch.
fn deliver<R>(
    total: usize,
    batch: usize,
    receive: &mpsc::Receiver<(usize, R)>,
    window: &Window,
    consume: &mut impl FnMut(usize, Vec<R>) -> Result<()>,
) -> Result<()> {
    let mut early: BTreeMap<usize, R> = BTreeMap::new();
    let mut start = 0;
    while start < total {
        let end = (start + batch).min(total);
        let mut results = Vec::with_capacity(end - start);
        while start + results.len() < end {
            let wanted = start + results.len();
            match early.remove(&wanted) {
                Some(r) => results.push(r),
                // Workers only exit early once stopped, so a closed channel here is a
                // worker that panicked: the scope re-raises that panic when it joins.
                None => match receive.recv() {
                    Ok((i, r)) => {
                        early.insert(i, r);
                    }
                    Err(_) => return Ok(()),
                },
            }
        }
        window.advance(end);
        consume(start, results)?;
        start = end;
    }
    Ok(())
}

/// How far ahead workers may go: item `i` may start once `i < taken + size`, where `taken` is
/// the number of items the consumer has taken.
struct Window {
    taken: Mutex<usize>,
    moved: Condvar,
    size: usize,
    stopped: AtomicBool,
}

impl Window {
    fn new(size: usize) -> Self {
        Window {
            taken: Mutex::new(0),
            moved: Condvar::new(),
            size,
            stopped: AtomicBool::new(false),
        }
    }

    /// Blocks until item `i` may start; false once the consumer has stopped.
    fn wait_for(&self, i: usize) -> bool {
        let mut taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        while i >= *taken + self.size && !self.stopped.load(Ordering::Acquire) {
            taken = self.moved.wait(taken).unwrap_or_else(|e| e.into_inner());
        }
        !self.stopped.load(Ordering::Acquire)
    }

    fn advance(&self, taken: usize) {
        *self.taken.lock().unwrap_or_else(|e| e.into_inner()) = taken;
        self.moved.notify_all();
    }

    fn stop(&self) {
        // Under the lock, so that no worker checks the flag and then sleeps through the wake-up.
        let _taken = self.taken.lock().unwrap_or_else(|e| e.into_inner());
        self.stopped.store(true, Ordering::Release);
        self.moved.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::time::Duration;

    /// Results arrive in input order and batch sizes, whatever order the work finishes in.
    #[test]
    fn results_in_input_order_whatever_the_finishing_order() {
        let items: Vec<u64> = (0..103).collect();
        let mut seen = Vec::new();
        map_in_order(
            &items,
            10,
            |&i| {
                // Early items are the slow ones, so later ones finish first.
                std::thread::sleep(Duration::from_micros((103 - i) * 50 * (i % 3)));
                i * 2
            },
            |start, results| {
                assert_eq!(start, seen.len());
                assert_eq!(results.len(), 10.min(103 - start));
                seen.extend(results);
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(seen, items.iter().map(|i| i * 2).collect::<Vec<_>>());
    }

    /// Workers never get more than the window ahead of the consumer, so a long list does not
    /// pile up in memory behind a slow consumer.
    #[test]
    fn workers_stay_within_the_window() {
        let items: Vec<usize> = (0..400).collect();
        let started = AtomicUsize::new(0);
        let workers = rayon::current_num_threads().min(items.len());
        let window = 2 * 4 + AHEAD_PER_WORKER * workers;
        map_in_order(
            &items,
            4,
            |&i| {
                started.fetch_max(i + 1, Ordering::SeqCst);
                i
            },
            |start, _| {
                std::thread::sleep(Duration::from_millis(1));
                // Items up to start + batch are taken; the workers may be a window beyond.
                assert!(started.load(Ordering::SeqCst) <= start + 4 + window);
                Ok(())
            },
        )
        .unwrap();
    }

    /// A consumer error stops the run without waiting for the rest of the list.
    #[test]
    fn a_consumer_error_stops_the_workers() {
        let items: Vec<usize> = (0..10_000).collect();
        let done = AtomicUsize::new(0);
        let err = map_in_order(
            &items,
            8,
            |&i| {
                done.fetch_add(1, Ordering::SeqCst);
                i
            },
            |start, _| {
                if start >= 16 {
                    return Err(Error::invalid("stop here"));
                }
                Ok(())
            },
        )
        .unwrap_err();
        assert!(err.to_string().contains("stop here"));
        assert!(done.load(Ordering::SeqCst) < 1_000);
    }

    #[test]
    fn empty_list_calls_nothing() {
        let items: Vec<u8> = Vec::new();
        map_in_order(&items, 4, |_| 0, |_, _| panic!("nothing to consume")).unwrap();
    }
}
