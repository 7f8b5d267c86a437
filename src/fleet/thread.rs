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

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    fn nice() -> rustix::io::Result<i32> {
        rustix::process::getpriority_process(Some(rustix::thread::gettid()))
    }

    #[tokio::test]
    async fn work_and_its_blocking_tasks_run_at_nice_19_while_the_caller_keeps_its_priority() {
        let before = nice().unwrap();
        let (tx, rx) = oneshot::channel();
        let done = spawn_low_priority("test-sync", async move {
            let thread = std::thread::current().name().map(str::to_owned);
            let blocking = tokio::task::spawn_blocking(nice).await.unwrap();
            let _ = tx.send((thread, nice().unwrap(), blocking.unwrap()));
        })
        .unwrap();
        let (thread, own, blocking) = rx.await.unwrap();
        done.await.unwrap();
        assert_eq!(thread.as_deref(), Some("test-sync"));
        assert_eq!((own, blocking), (19, 19));
        assert_eq!(
            nice().unwrap(),
            before,
            "the caller's priority must not change"
        );
    }
}
