//! The periodic disk checks of every running instance, on one thread of their own.
//!
//! Each running instance's home is walked every `disk_check_interval`. On tokio's blocking
//! pool, instances started together tick together: each tick handed the pool dozens of walks
//! at once, the pool grew a thread for each, and its wake-ups (the longest-idle thread
//! first) then kept every one of them busy often enough never to reach its keep-alive. With
//! 50 instances, 40 to 70 threads stayed for good, each with its touched stack and its
//! allocator's thread cache: about 10 MB of the agent's RSS. One thread walking the homes
//! in turn costs one stack. A check then waits behind the others, which delays a limit by
//! the queue's length (walks take milliseconds), never loses one.

use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::sync::mpsc;

type Job = Box<dyn FnOnce() + Send>;

/// The checker's queue; `None` when its thread could not be started.
static QUEUE: OnceLock<Option<mpsc::Sender<Job>>> = OnceLock::new();

/// Runs `check` on the disk-check thread and returns its result; on the blocking pool when
/// that thread is not there. `None` only if `check` panicked.
pub(super) async fn run<T, F>(check: F) -> Option<T>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = tx.send(check());
    });
    // Without the thread (it could not start, or a job killed it), the blocking pool.
    let job = match queue() {
        Some(queue) => match queue.send(job) {
            Ok(()) => return rx.await.ok(),
            Err(mpsc::SendError(job)) => job,
        },
        None => job,
    };
    let _ = tokio::task::spawn_blocking(job).await;
    rx.await.ok()
}

/// The queue, its thread started on first use.
fn queue() -> Option<&'static mpsc::Sender<Job>> {
    QUEUE
        .get_or_init(|| {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("dea-disk".into())
                .spawn(move || {
                    for job in rx {
                        // A panicking walk loses its own result (its caller sees `None`),
                        // not the thread.
                        let _ = std::panic::catch_unwind(AssertUnwindSafe(job));
                    }
                });
            match spawned {
                Ok(_) => Some(tx),
                Err(e) => {
                    tracing::warn!("disk checks on the blocking pool: no thread of their own: {e}");
                    None
                }
            }
        })
        .as_ref()
}
