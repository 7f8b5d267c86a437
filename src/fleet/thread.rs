//! The sync's own thread, at the lowest CPU priority.
//!
//! A full sync decodes and maps hundreds of megabytes of JSON: at 100,000
//! hosts it keeps a core busy for a couple of seconds. On the async workers
//! (or on the blocking pool at normal priority) that work shares the cores
//! with Checks on equal terms, and the scheduler can leave a Check waiting a
//! time slice behind it: Check p99 tripled during a sync. On a thread of its
//! own at nice 19 (and with the blocking threads it starts, which inherit the
//! value) the sync takes only the CPU that Checks leave idle; it is no slower
//! when the service is quiet.
//!
//! When the process may run on 2 to 4 CPUs (a small VM, or a pod given its
//! own cpuset), the sync thread (and again the threads it starts) is also
//! kept on one of them, the last in the process's set; the Check workers
//! keep every CPU. Why this helps was not traced, only measured: on a 2-core
//! machine, Check p99 during a sync of 100,000 hosts fell from 1.8–2.3 ms to
//! 0.7–1.5 ms, at the same sync time (BENCHMARKS.md). On a larger set (a big
//! node shared with other work) the thread is left free: kept on one CPU
//! that other processes keep busy, a nice-19 thread would get a few percent
//! of it and the sync would crawl.

use std::future::Future;

use tokio::sync::oneshot;

/// Runs `work` to completion on a new thread named `name`, at the lowest CPU
/// priority, in a current-thread runtime of its own. The receiver resolves
/// when `work` has finished and the runtime has shut down.
pub fn spawn_low_priority<F>(name: &str, work: F) -> std::io::Result<oneshot::Receiver<()>>
where
    F: Future<Output = ()> + Send + 'static,
{
    let (done_tx, done_rx) = oneshot::channel();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name(format!("{name}-blocking"))
        .build()?;
    std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            keep_to_one_cpu();
            runtime.block_on(work);
            drop(runtime);
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// Sets this thread's nice value to 19. Linux applies `setpriority` on a
/// thread id to that thread alone, and new threads inherit the value.
#[cfg(target_os = "linux")]
fn lower_priority() {
    let this_thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(this_thread), 19) {
        tracing::warn!(%error, "could not lower the sync thread's priority");
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_priority() {}

/// Most CPUs the process may use for the sync to be kept on one of them.
#[cfg(target_os = "linux")]
const KEEP_TO_ONE_UP_TO: usize = 4;

/// The CPUs this thread may run on, in ascending order.
#[cfg(target_os = "linux")]
fn allowed_cpus() -> rustix::io::Result<Vec<usize>> {
    use rustix::thread::{CpuSet, sched_getaffinity};
    let set = sched_getaffinity(None)?;
    Ok((0..CpuSet::MAX_CPU)
        .filter(|&cpu| set.is_set(cpu))
        .collect())
}

/// Restricts this thread to the last CPU it may use, if it may use 2 to
/// [`KEEP_TO_ONE_UP_TO`]; threads it starts inherit the restriction.
#[cfg(target_os = "linux")]
fn keep_to_one_cpu() {
    use rustix::thread::{CpuSet, sched_setaffinity};
    let allowed = match allowed_cpus() {
        Ok(cpus) => cpus,
        Err(error) => {
            tracing::warn!(%error, "could not read the sync thread's CPUs");
            return;
        }
    };
    let last = match allowed[..] {
        [_, .., last] if allowed.len() <= KEEP_TO_ONE_UP_TO => last,
        _ => return,
    };
    let mut one = CpuSet::new();
    one.set(last);
    if let Err(error) = sched_setaffinity(None, &one) {
        tracing::warn!(%error, cpu = last, "could not keep the sync thread on one CPU");
    }
}

#[cfg(not(target_os = "linux"))]
fn keep_to_one_cpu() {}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice() -> rustix::io::Result<i32> {
        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
    }

    #[tokio::test]
    async fn work_and_its_blocking_tasks_run_at_nice_19_on_one_cpu_while_the_caller_keeps_its_own()
    {
        let (before, caller_cpus) = (nice().unwrap(), allowed_cpus().unwrap());
        let (tx, rx) = oneshot::channel();
        let done = spawn_low_priority("test-sync", async move {
            let thread = std::thread::current().name().map(str::to_owned);
            let blocking =
                tokio::task::spawn_blocking(|| (nice().unwrap(), allowed_cpus().unwrap()))
                    .await
                    .unwrap();
            let _ = tx.send((thread, (nice().unwrap(), allowed_cpus().unwrap()), blocking));
        })
        .unwrap();
        let (thread, own, blocking) = rx.await.unwrap();
        done.await.unwrap();
        assert_eq!(thread.as_deref(), Some("test-sync"));
        // One CPU, the caller's last, when the caller has 2 to 4.
        let expected_cpus = if (2..=KEEP_TO_ONE_UP_TO).contains(&caller_cpus.len()) {
            vec![*caller_cpus.last().unwrap()]
        } else {
            caller_cpus.clone()
        };
        assert_eq!(own, (19, expected_cpus.clone()));
        assert_eq!(blocking, (19, expected_cpus));
        assert_eq!(
            (nice().unwrap(), allowed_cpus().unwrap()),
            (before, caller_cpus),
            "the caller's priority and CPUs must not change"
        );
    }
}
