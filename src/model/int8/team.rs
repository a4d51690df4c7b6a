//! Runs the passes around the int8 products on libtorch's own OpenMP thread team.
//!
//! libtorch's kernels (`_int_mm` among them) run on OpenMP threads, which spin for a while
//! after each parallel region, waiting for the next. Work handed to another pool (rayon) in
//! between competes with those spinning threads for the same cores: in the first int8
//! version's profile a third of the forward pass was OpenMP spinning. Handing the passes to
//! the same team (`GOMP_parallel`, which LLVM's and Intel's OpenMP runtimes also provide)
//! avoids the contention; where no such runtime is loaded, rayon does the work.

use std::ffi::{c_int, c_uint, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;

/// How many parts to split a pass into: one per thread of libtorch's team.
pub fn threads() -> usize {
    tch::get_num_threads().max(1) as usize
}

/// Calls `body` on every part, one part per thread, and returns when all are done.
pub fn run<T: Send>(parts: Vec<T>, body: impl Fn(T) + Sync + Send) {
    if parts.len() <= 1 {
        parts.into_iter().for_each(body);
        return;
    }
    match openmp() {
        Some(omp) => omp.run(parts, &body),
        None => parts.into_par_iter().for_each(body),
    }
}

type ParallelFn = unsafe extern "C" fn(extern "C" fn(*mut c_void), *mut c_void, c_uint, c_uint);
type QueryFn = unsafe extern "C" fn() -> c_int;

/// The entry points of the OpenMP runtime libtorch loaded.
struct OpenMp {
    parallel: ParallelFn,
    thread_num: QueryFn,
    num_threads: QueryFn,
}

/// The work of one parallel region, shared by its threads.
struct Region<'a, T> {
    parts: Vec<Mutex<Option<T>>>,
    body: &'a (dyn Fn(T) + Sync),
    thread_num: QueryFn,
    num_threads: QueryFn,
    panicked: AtomicBool,
}

/// What each thread of the team runs: the parts whose index is its thread number, modulo the
/// team's size (the team may be smaller than asked).
extern "C" fn run_region<T>(data: *mut c_void) {
    // SAFETY: `data` is the `Region<T>` that `OpenMp::run` keeps alive across the region.
    let region = unsafe { &*(data as *const Region<T>) };
    // SAFETY: both are plain queries of the runtime, valid inside a parallel region.
    let (me, team) = unsafe { ((region.thread_num)(), (region.num_threads)()) };
    let (me, team) = (me.max(0) as usize, team.max(1) as usize);
    for slot in region.parts.iter().skip(me).step_by(team) {
        let part = slot.lock().map(|mut p| p.take()).unwrap_or(None);
        if let Some(part) = part {
            // A panic must not unwind into C: record it and re-raise after the region.
            if catch_unwind(AssertUnwindSafe(|| (region.body)(part))).is_err() {
                region.panicked.store(true, Ordering::Relaxed);
            }
        }
    }
}

impl OpenMp {
    fn run<T: Send>(&self, parts: Vec<T>, body: &(dyn Fn(T) + Sync)) {
        let threads = parts.len() as c_uint;
        let region = Region {
            parts: parts.into_iter().map(|p| Mutex::new(Some(p))).collect(),
            body,
            thread_num: self.thread_num,
            num_threads: self.num_threads,
            panicked: AtomicBool::new(false),
        };
        // SAFETY: `GOMP_parallel` runs `run_region::<T>` on every thread of a team and returns
        // after all of them; `region` outlives the call.
        unsafe {
            (self.parallel)(
                run_region::<T>,
                &region as *const Region<T> as *mut c_void,
                threads,
                0,
            );
        }
        assert!(
            !region.panicked.load(Ordering::Relaxed),
            "an int8 pass panicked on an OpenMP thread"
        );
    }
}

/// The OpenMP runtime already loaded into the process (by libtorch), if any.
fn openmp() -> Option<&'static OpenMp> {
    static RUNTIME: OnceLock<Option<OpenMp>> = OnceLock::new();
    RUNTIME.get_or_init(find_openmp).as_ref()
}

#[cfg(unix)]
fn find_openmp() -> Option<OpenMp> {
    let names = [
        c"libgomp.so.1",
        c"libomp.so",
        c"libiomp5.so",
        c"libomp.dylib",
    ];
    names.iter().find_map(|name| {
        // SAFETY: RTLD_NOLOAD only returns a handle to a library already loaded; the symbols
        // have the C signatures of the OpenMP ABI (GOMP_parallel is libgomp's, which LLVM's
        // libomp and Intel's libiomp5 export for compatibility).
        unsafe {
            let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOLOAD | libc::RTLD_LAZY);
            if handle.is_null() {
                return None;
            }
            let symbol = |s: &std::ffi::CStr| libc::dlsym(handle, s.as_ptr());
            let parallel = symbol(c"GOMP_parallel");
            let thread_num = symbol(c"omp_get_thread_num");
            let num_threads = symbol(c"omp_get_num_threads");
            if parallel.is_null() || thread_num.is_null() || num_threads.is_null() {
                return None;
            }
            Some(OpenMp {
                parallel: std::mem::transmute::<*mut c_void, ParallelFn>(parallel),
                thread_num: std::mem::transmute::<*mut c_void, QueryFn>(thread_num),
                num_threads: std::mem::transmute::<*mut c_void, QueryFn>(num_threads),
            })
        }
    })
}

#[cfg(not(unix))]
fn find_openmp() -> Option<OpenMp> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every part runs exactly once, whichever pool runs them.
    #[test]
    fn every_part_runs_once() {
        let _ = tch::Tensor::zeros([1], (tch::Kind::Float, tch::Device::Cpu)); // loads libtorch
                                                                               // On Linux, libtorch's libgomp is what the passes should share.
        #[cfg(target_os = "linux")]
        assert!(openmp().is_some());
        let mut counts = vec![0u32; 7];
        let parts: Vec<&mut u32> = counts.iter_mut().collect();
        run(parts, |c| *c += 1);
        assert_eq!(counts, vec![1; 7]);
        let mut one = [0u32];
        run(one.iter_mut().collect(), |c| *c += 5);
        assert_eq!(one, [5]);
    }
}
