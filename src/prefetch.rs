//! Work done ahead of its consumer, in parallel, handed over in input order: decoding the
//! images of a list while the model embeds the ones before them.
//!
//! Why not one parallel batch at a time: a batch is only as fast as its slowest item, and
//! photo folders mix sizes. One 12-megapixel JPEG takes 50x as long as a 500x375 one, so with
//! 16 cores a batch of 64 waited for its one large photo while the other 15 cores idled (the
//! likely cap of the ~330 img/s once measured from disk on an H100 host). Here each thread
//! takes the next item as soon as it is free, up to a window ahead of the consumer, so a slow
//! item delays only its own batch's hand-over while the others keep decoding.

use std::any::Any;
use std::collections::BTreeMap;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Condvar, Mutex};

use crate::error::Result;

/// Items each worker may run ahead of the consumer beyond two batches (room for a straggler to
/// finish while the other workers go on), up to two more batches in all.
const AHEAD_PER_WORKER: usize = 8;

/// What a worker sends: an item's index and its result, or the panic its work raised.
type Outcome<R> = (usize, std::result::Result<R, Box<dyn Any + Send>>);

/// Runs `work` on every item and calls `consume(start, results)` with consecutive batches of
/// up to `batch` results in input order (`start`: the index of the batch's first item).
///
/// The work runs on threads started for this call, as many as rayon's pool has (its size is
/// the one knob users have for "how many cores"), not on the pool itself: a worker waiting for
/// the window to move must not hold a pool thread. At most [`window_size`] items are held
/// ahead of the consumer, so memory stays bounded whatever the list's length. An error from
/// `consume` stops the workers (items under way finish, no new ones start) and is returned; a
/// panic in `work` or `consume` stops them too and is raised again on the caller's thread.
pub fn map_in_order<T, R, W, C>(items: &[T], batch: usize, work: W, consume: C) -> Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    C: FnMut(usize, Vec<R>) -> Result<()>,
{
    let batch = batch.max(1);
    let groups: Vec<usize> = (0..items.len())
        .step_by(batch)
        .map(|start| batch.min(items.len() - start))
        .collect();
    map_in_groups(items, &groups, work, consume)
}

/// [`map_in_order`] with batches of the given sizes (which sum to `items.len()`): the training
/// loader's batches, whose last one, or a rank's slice, may be shorter.
pub fn map_in_groups<T, R, W, C>(
    items: &[T],
    groups: &[usize],
    work: W,
    mut consume: C,
) -> Result<()>
where
    T: Sync,
    R: Send,
    W: Fn(&T) -> R + Sync,
    C: FnMut(usize, Vec<R>) -> Result<()>,
{
    debug_assert_eq!(groups.iter().sum::<usize>(), items.len());
    let batch = groups.iter().copied().max().unwrap_or(1).max(1);
    let workers = rayon::current_num_threads().clamp(1, items.len().max(1));
    let window = Window::new(window_size(batch, workers));
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        // Whichever way the consumer leaves (done, error, panic), blocked workers are woken
        // to exit: the scope cannot return before they have.
        let _stop = StopOnDrop(&window);
        let (send, receive) = mpsc::channel::<Outcome<R>>();
        for _ in 0..workers {
            let send = send.clone();
            let (next, window, work) = (&next, &window, &work);
            scope.spawn(move || loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= items.len() || !window.wait_for(i) {
                    return;
                }
                let result = panic::catch_unwind(AssertUnwindSafe(|| work(&items[i])));
                let panicked = result.is_err();
                if send.send((i, result)).is_err() || panicked {
                    return;
                }
            });
        }
        drop(send);
        deliver(groups, &receive, &window, &mut consume)
    })
}

/// How many items may be under way or waiting beyond those the consumer has taken: the next
/// two batches, plus room for stragglers that grows with the workers (capped: a 128-thread
/// host must not hold hundreds of decoded images per call).
fn window_size(batch: usize, workers: usize) -> usize {
    2 * batch + (AHEAD_PER_WORKER * workers).min(2 * batch)
}

/// Receives results in any order and hands them to `consume` in order, group by group.
fn deliver<R>(
    groups: &[usize],
    receive: &mpsc::Receiver<Outcome<R>>,
    window: &Window,
    consume: &mut impl FnMut(usize, Vec<R>) -> Result<()>,
) -> Result<()> {
    let mut early: BTreeMap<usize, R> = BTreeMap::new();
    let mut start = 0;
    for &size in groups {
        let end = start + size;
        let mut results = Vec::with_capacity(end - start);
        while start + results.len() < end {
            let wanted = start + results.len();
            if let Some(r) = early.remove(&wanted) {
                results.push(r);
                continue;
            }
            // Every worker holds a sender until it has sent all it took or the window stops,
            // and a panic is sent before its worker exits: the channel stays open while an
            // item is owed.
            match receive.recv() {
                Ok((i, Ok(r))) => {
                    early.insert(i, r);
                }
                Ok((_, Err(payload))) => panic::resume_unwind(payload),
                Err(_) => unreachable!("workers exited with item {wanted} owed"),
            }
        }
        window.advance(end);
        consume(start, results)?;
        start = end;
    }
    Ok(())
}

/// How far ahead workers may go: item `i` may start once `i < taken + size`, where `taken` is
/// the number of items the consumer has taken; and whether the consumer has stopped.
struct Window {
    state: Mutex<WindowState>,
    moved: Condvar,
    size: usize,
}

struct WindowState {
    taken: usize,
    stopped: bool,
}

impl Window {
    fn new(size: usize) -> Self {
        Window {
            state: Mutex::new(WindowState {
                taken: 0,
                stopped: false,
            }),
            moved: Condvar::new(),
            size,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, WindowState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until item `i` may start; false once the consumer has stopped.
    fn wait_for(&self, i: usize) -> bool {
        let mut state = self.lock();
        while i >= state.taken + self.size && !state.stopped {
            state = self.moved.wait(state).unwrap_or_else(|e| e.into_inner());
        }
        !state.stopped
    }

    fn advance(&self, taken: usize) {
        self.lock().taken = taken;
        self.moved.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.moved.notify_all();
    }
}

struct StopOnDrop<'a>(&'a Window);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::time::Duration;

    /// Results arrive in input order and batch sizes, whatever order the work finishes in.
    #[test]
    fn groups_of_any_size_arrive_whole_and_in_order() {
        let items: Vec<usize> = (0..20).collect();
        let groups = [3, 0, 7, 1, 9];
        let mut got = Vec::new();
        map_in_groups(
            &items,
            &groups,
            |&i| i * 10,
            |start, results| {
                got.push((start, results));
                Ok(())
            },
        )
        .unwrap();
        let mut start = 0;
        for ((at, results), &size) in got.iter().zip(&groups) {
            assert_eq!((*at, results.len()), (start, size));
            assert!(results.iter().zip(start..).all(|(&r, i)| r == i * 10));
            start += size;
        }
        assert_eq!(got.len(), groups.len());
    }

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
        let window = window_size(4, rayon::current_num_threads().min(items.len()));
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
        // Two batches were taken; workers went at most a window past them.
        let window = window_size(8, rayon::current_num_threads());
        assert!(done.load(Ordering::SeqCst) <= 24 + window);
    }

    /// A panic in the work or in the consumer, far into a list longer than the window, comes
    /// back to the caller with its message instead of leaving workers blocked (a hang).
    #[test]
    fn panics_reach_the_caller_instead_of_hanging() {
        let items: Vec<usize> = (0..5_000).collect();
        let in_work = panic::catch_unwind(|| {
            map_in_order(
                &items,
                8,
                |&i| {
                    assert!(i != 300, "item 300 is broken");
                    i
                },
                |_, _| Ok(()),
            )
        })
        .unwrap_err();
        assert_eq!(in_work.downcast_ref::<&str>(), Some(&"item 300 is broken"));
        let in_consumer = panic::catch_unwind(|| {
            map_in_order(
                &items,
                8,
                |&i| i,
                |start, _| {
                    assert!(start < 400, "consumer broke");
                    Ok(())
                },
            )
        })
        .unwrap_err();
        assert_eq!(in_consumer.downcast_ref::<&str>(), Some(&"consumer broke"));
    }

    #[test]
    fn empty_list_calls_nothing() {
        let items: Vec<u8> = Vec::new();
        map_in_order(&items, 4, |_| 0, |_, _| panic!("nothing to consume")).unwrap();
    }
}
